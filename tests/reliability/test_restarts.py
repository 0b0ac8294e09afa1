"""`jupyter faas serve` killed and started again on its state dir: what it owned is intact, and nothing is lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from jupyter_faas.record.log import read_invocations
from tests.helpers import AUTH, Served, start_serve, stop_process_group, wait_for, write_notebook

CELLS = [
    "%%faas square x:int\nx * x",
    "%%faas nap seconds:float\nimport time\ntime.sleep(seconds)\nseconds",
    "%%faas fails x:int\nraise ValueError(f'no {x}')",
]


def _kill(server: Served) -> None:
    """SIGKILL the whole process group: no shutdown code runs, as in a crash or a power cut."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def test_a_killed_serve_restarts_with_its_state_and_accounts_for_what_was_in_flight(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "functions.ipynb", CELLS)
    state = tmp_path / "state"
    env = {"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s"}
    first = start_serve(notebook, state, env=env)
    try:
        assert first.post("square", json={"x": 3}, headers=AUTH).json() == 9
        failed = first.post("fails", params={"async": "true"}, json={"x": 1}, headers=AUTH).json()["id"]
        wait_for(lambda: first.get(f"faas/api/invocations/{failed}", headers=AUTH).json()["status"] == "error", 30)
        done = first.post("nap", params={"async": "true"}, json={"seconds": 0.01}, headers=AUTH).json()["id"]
        wait_for(lambda: first.get(f"faas/api/invocations/{done}", headers=AUTH).json()["status"] == "ok", 30)
        # Accepted, and running when the process dies.
        interrupted = first.post("nap", params={"async": "true"}, json={"seconds": 60}, headers=AUTH).json()["id"]
        wait_for(
            lambda: first.get(f"faas/api/invocations/{interrupted}", headers=AUTH).json()["status"] == "running", 30
        )
        time.sleep(1.5)  # past the durable log's one-second batch, so the finished records are on disk
        _kill(first)
    finally:
        stop_process_group(first.process)

    again = start_serve(notebook, state, env=env)
    try:
        # Deployed functions answer again.
        assert again.post("square", json={"x": 4}, headers=AUTH).json() == 16
        # The invocation that was running is not forgotten: it is a failure, and a dead letter to replay.
        state_now = again.get(f"faas/api/invocations/{interrupted}", headers=AUTH).json()
        assert state_now["status"] == "error" and state_now["error"]["type"] == "Interrupted"
        listed = again.get("faas/api/dead-letters", headers=AUTH).json()["dead_letters"]
        letters = {letter["id"]: letter for letter in listed}
        assert set(letters) == {failed, interrupted}  # the earlier dead letter is still there
        assert letters[interrupted]["input"] == {"seconds": 60}
        replay = httpx.post(f"{again.url}faas/api/dead-letters/{interrupted}/replay", headers=AUTH, timeout=30)
        assert replay.status_code == 202
        # The invocation log kept the records written before the kill.
        logged = {record.id for record in read_invocations(state)}
        assert {failed, done} <= logged
    finally:
        stop_process_group(again.process)
    (journal,) = state.glob("serve/*/in-flight")
    assert not any(journal.iterdir()), "an in-flight entry was left behind"
