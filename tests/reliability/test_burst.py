"""A burst of 200 concurrent HTTP requests reaches `jupyter faas serve` while it has zero workers: all get 200."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.helpers import AUTH, start_serve, stop_process_group, wait_for, write_notebook

BURST = 200


def test_a_burst_from_zero_workers_gets_200_for_every_request(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "burst.ipynb", ["%%faas square x:int\nx * x"])
    server = start_serve(notebook, tmp_path / "state", env={"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "1s"})
    try:
        assert server.post("square", json={"x": 3}, headers=AUTH).json() == 9

        def workers() -> int:
            return server.get("faas/api/platform", headers=AUTH).json()["workers"]

        wait_for(lambda: workers() == 0, 60, "the cluster to scale to zero")

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=BURST)
            async with httpx.AsyncClient(timeout=90, limits=limits, headers=AUTH) as client:
                url = f"{server.url}faas/functions/square"
                return await asyncio.gather(*(client.post(url, json={"x": i}) for i in range(BURST)))

        started = time.monotonic()
        responses = asyncio.run(burst())
        elapsed = time.monotonic() - started
        assert [r.status_code for r in responses] == [200] * BURST
        assert [r.json() for r in responses] == [i * i for i in range(BURST)]
        invocations = server.get("faas/api/functions/square/invocations", params={"limit": 500}, headers=AUTH)
        cold = sum(1 for record in invocations.json()["invocations"] if record["cold_start"])
        assert cold >= 1  # it really started from zero
        print(f"\n{BURST} concurrent requests from zero workers: all 200 in {elapsed:.2f} s, {cold} cold starts")
    finally:
        stop_process_group(server.process)
