"""`jupyter faas serve NOTEBOOK --watch` as a real subprocess: a saved notebook runs again and its functions switch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AUTH, Served, start_serve, stop_process_group, wait_for, write_notebook


def cells(version: str, folder: Path, every: str = "1h") -> list[str]:
    started, gate = folder / f"started-{version}", folder / "gate"
    return [
        f"%%faas version --http\n{version!r}",
        # Says it has started, then waits for the test to open the gate: an invocation in flight on demand.
        "%%faas slow --http\nimport pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        f"'slow ' + {version!r}",
        f"%%faas tick --every {every}\n'tick'",
    ]


@dataclass
class Watched:
    server: Served
    notebook: Path
    folder: Path

    def version(self) -> Any:
        return self.server.post("version", json={}, headers=AUTH).json()

    def save(self, sources: list[str]) -> None:
        write_notebook(self.notebook, sources)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    folder = tmp_path_factory.mktemp("watch")
    notebook = write_notebook(folder / "live.ipynb", [*cells("v1", folder), "%%faas gone --http\n'gone'"])
    server = start_serve(notebook, folder / "state", "--watch", env={"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s"})
    try:
        wait_for(lambda: any("watching live.ipynb" in line for line in server.output), 30, "the watch")
        yield Watched(server, notebook, folder)
    finally:
        stop_process_group(server.process)


def test_a_saved_notebook_switches_each_function_and_requests_in_flight_finish_on_the_old(watched: Watched) -> None:
    server, folder = watched.server, watched.folder
    assert watched.version() == "v1"
    assert server.post("gone", json={}, headers=AUTH).json() == "gone"
    answers: list[httpx.Response] = []
    in_flight = threading.Thread(
        target=lambda: answers.append(server.post("slow", json={}, headers=AUTH)), name="slow-request"
    )
    in_flight.start()
    try:
        wait_for(lambda: (folder / "started-v1").exists(), 60, "the slow v1 invocation to run")
        # Saved: a new version of each function, a schedule changed, and `gone` no longer in the notebook.
        watched.save(cells("v2", folder, every="2h"))
        wait_for(lambda: watched.version() == "v2", 90, "the new version to answer")
        assert in_flight.is_alive()  # still waiting on its gate, on the old version
        assert server.post("gone", json={}, headers=AUTH).status_code == 404
        triggers = server.get("faas/api/triggers", headers=AUTH).json()["triggers"]
        assert [(t["function"], t["every"]) for t in triggers] == [("tick", 7200)]
        assert server.get("faas/api/health").json() == {"status": "ok"}
    finally:
        (folder / "gate").touch()
        in_flight.join(timeout=60)
    (answer,) = answers
    assert answer.json() == "slow v1"
    assert server.post("slow", json={}, headers=AUTH).json() == "slow v2"
    assert any("updated: version" in line for line in server.output)
    assert any("removed: gone" in line for line in server.output)


def test_a_notebook_that_now_fails_keeps_the_old_versions_serving_and_prints_the_error(watched: Watched) -> None:
    before = watched.version()
    broken = [*cells("v3", watched.folder), "raise RuntimeError('broken on purpose')"]
    watched.save(broken)

    def reported() -> list[str]:
        return [line for line in watched.server.output if line.startswith("jupyter faas serve: live.ipynb: cell")]

    wait_for(reported, 90, "the error")
    (said,) = reported()
    assert "cell 5" in said and "the previous versions keep serving" in said
    # Its cells ran up to the failure, but none of what they deployed is served.
    assert watched.version() == before
    assert watched.server.get("faas/api/health").json() == {"status": "ok"}
    # A notebook that cannot even be read is the same: reported, and the old versions serve on.
    watched.notebook.write_text("{not json")
    wait_for(lambda: any("cannot read" in line for line in watched.server.output), 60, "the read error")
    assert watched.version() == before
    # Fixed and saved again: it switches.
    watched.save(cells("v4", watched.folder))
    wait_for(lambda: watched.version() == "v4", 90, "the fixed notebook's version")
