"""A backlog of asynchronous invocations: bounded (429 with Retry-After), never starving a synchronous caller."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import pytest

from jupyter_faas import function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import QueueFull
from tests.helpers import RELIABILITY_AUTH as AUTH
from tests.helpers import StateServed, error_of, serving, wait_for

CELLS = [
    "%%faas square x:int\nx * x",
    "%%faas nap seconds:float --timeout 60s\nimport time\ntime.sleep(seconds)\nseconds",
    "%%faas other x:int\nx + 1",
    "%%faas hold gate:str --timeout 60s\nimport os, time\nwhile not os.path.exists(gate):\n    time.sleep(0.01)\ngate",
]
# One worker of two slots; the backlog bounds small enough to reach in a test.
ENV = {
    "DASK_FAAS__CLUSTER__MAXIMUM": "1",
    "DASK_FAAS__QUEUE__MAX_PENDING_PER_FUNCTION": "40",
    "DASK_FAAS__QUEUE__MAX_PENDING": "50",
}
NAPS, NAP = 40, 0.5  # 40 naps of 0.5 s on 2 slots: the backlog takes 10 s to drain


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateServed]:
    """One serve for the module: each test ends with every invocation it queued settled, so the next starts empty."""
    with serving(tmp_path_factory.mktemp("backlog"), CELLS, ENV) as server:
        yield server


def post_async(served: StateServed, name: str, body: dict) -> object:
    return served.post(name, params={"async": "true"}, json=body, headers=AUTH)


@pytest.mark.timeout(180)
def test_a_sync_call_is_not_starved_by_a_backlog(served: StateServed) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_async(served, "nap", {"seconds": NAP}), range(NAPS)))
    assert [a.status_code for a in answers] == [202] * NAPS
    # A synchronous caller waits for at most a slot's current nap, not for the whole backlog.
    began = time.monotonic()
    response = served.post("square", json={"x": 7}, headers=AUTH)
    waited = time.monotonic() - began
    assert response.status_code == 200 and response.json() == 49
    print(f"\nsync call behind a backlog of {NAPS} x {NAP} s on 2 slots: answered in {waited:.2f} s")
    assert waited < 4, f"the sync call waited {waited:.1f} s behind the backlog"
    settle(served, [a.json()["id"] for a in answers])


@pytest.mark.timeout(180)
def test_a_backlog_past_its_bounds_gets_429_and_loses_nothing_accepted(served: StateServed, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # Each holds its slot until the gate opens: the backlog cannot drain while the bounds are tried.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_async(served, "hold", {"gate": str(gate)}), range(40)))
    assert [a.status_code for a in answers] == [202] * 40
    accepted = [a.json()["id"] for a in answers]

    refused = post_async(served, "hold", {"gate": str(gate)})
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    error = error_of(refused)
    assert error["type"] == "QueueFull" and "faas.queue.max-pending-per-function is 40" in error["message"]

    # Over all functions: another function is let in until 50 are pending in all.
    others = [post_async(served, "other", {"x": n}) for n in range(12)]
    assert [o.status_code for o in others] == [202] * 10 + [429] * 2
    assert "faas.queue.max-pending is 50" in error_of(others[-1])["message"]
    accepted += [o.json()["id"] for o in others[:10]]

    gate.touch()
    settle(served, accepted)
    # With the backlog drained, the bound lets new ones in again.
    assert post_async(served, "hold", {"gate": str(gate)}).status_code == 202


def settle(served: StateServed, accepted: list[str]) -> None:
    """Nothing accepted is lost: every 202 ends with its result."""

    def all_ok() -> bool:
        states = [served.get(f"faas/api/invocations/{i}", headers=AUTH).json()["status"] for i in accepted]
        return all(state == "ok" for state in states)

    wait_for(all_ok, timeout=90, message="every accepted invocation to end ok")


def test_enqueue_is_bounded_too(platform: Platform) -> None:
    @function(name="slow_enqueued", timeout="60s")
    def slow(seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds

    def enqueued_again() -> bool:
        try:
            slow.enqueue(0)
        except QueueFull:
            return False  # the last of the three may have its record before its future has ended
        return True

    with dask.config.set({"faas.queue.max-pending-per-function": 3}):
        ids = [slow.enqueue(0.3) for _ in range(3)]
        with pytest.raises(QueueFull, match=r"slow_enqueued has 3 pending"):
            slow.enqueue(0.3)
        wait_for(lambda: len([r for r in slow.invocations if r.status == "ok"]) == 3, timeout=60)
        assert {r.id for r in slow.invocations} == set(ids)
        wait_for(enqueued_again, timeout=10, message="the bound to let a new one in")
