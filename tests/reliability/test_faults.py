"""Faults on purpose, on the real embedded cluster: workers killed mid-map, scale-down churn under load."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_faas import WorkerLost, function
from jupyter_faas.dispatch.platform import Platform
from tests.helpers import wait_for

FULL = os.environ.get("FAAS_RELIABILITY_FULL") == "1"
# The scale-down churn runs this long: 60 s at full size, 15 s in CI.
CHURN_SECONDS = 60.0 if FULL else 15.0


def _ledger_function(ledger: Path, retries: int) -> Callable[..., int]:
    """A function that notes each run that completes in a shared file, so double runs can be counted."""
    ledger_path = str(ledger)

    @function(name=f"ledgered_r{retries}", retries=retries, timeout="30s")
    def ledgered(x: int) -> int:
        import os
        import time

        time.sleep(0.02)
        # O_APPEND writes of one short line are atomic, so concurrent sandboxes never interleave.
        fd = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{x}\n".encode())
        finally:
            os.close(fd)
        return 2 * x

    return ledgered


def _kill_a_worker_mid_map(
    own_platform: Callable[..., Platform], tmp_path: Path, retries: int, count: int = 500
) -> tuple[Callable[..., int], list[tuple], str, Counter]:
    """Map `count` ledgered calls on two workers, SIGKILL one a fifth of the way in.

    Returns the function, (value, error) per item, the killed worker, and how often each input ran to the end.
    """
    platform = own_platform({"faas.cluster.maximum": 2, "faas.cluster.idle-timeout": "600s"})
    ledger = tmp_path / "ledger"
    fn = _ledger_function(ledger, retries=retries)
    fn(0)  # warm both the function and a worker
    platform.client.wait_for_workers(1)
    results = platform.map(fn._definition, [((x,), {}) for x in range(count)])  # type: ignore[attr-defined]
    wait_for(lambda: results.done >= count // 5, timeout=60, message="a fifth of the map to finish")
    pids = platform.client.run(os.getpid)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    assert results.wait(120), f"the map hung: {results.done} of {count} done"
    outcomes = list(zip(results.values, results.errors, strict=True))
    return fn, outcomes, victim, Counter(int(line) for line in ledger.read_text().split())


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_map_loses_nothing_with_retries(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    fn, outcomes, victim, runs = _kill_a_worker_mid_map(own_platform, tmp_path, retries=2)
    assert [error for _, error in outcomes if error is not None] == []
    assert [value for value, _ in outcomes] == [2 * x for x in range(500)]
    records = fn.invocations[-500:]  # type: ignore[attr-defined]
    ids = Counter(record.id for record in records)
    assert len(ids) == 500 and max(ids.values()) == 1  # one record per invocation
    assert all(record.status == "ok" for record in records)
    retried = sum(1 for record in records if record.attempts > 1)
    assert retried >= 1, "the kill hit no invocation: the test did not test anything"
    twice = sum(1 for x in range(1, 500) if runs[x] > 1)
    print(f"\nworker {victim} killed: {retried} invocations retried, {twice} ran to completion twice, 0 lost")


@pytest.mark.timeout(300)
def test_without_retries_a_lost_worker_fails_its_invocations_clearly_and_runs_none_twice(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    _, outcomes, victim, runs = _kill_a_worker_mid_map(own_platform, tmp_path, retries=0)
    failed = [error for _, error in outcomes if error is not None]
    assert failed, "the kill hit no invocation: the test did not test anything"
    for error in failed:
        assert isinstance(error, WorkerLost)
        assert "was lost" in str(error) and "tcp://" in str(error)
    ok = [(x, value) for x, (value, error) in enumerate(outcomes) if error is None]
    assert all(value == 2 * x for x, value in ok)
    # x = 0 ran once to warm up and once in the map; nothing else ran more than once.
    assert runs[0] <= 2 and all(runs[x] <= 1 for x in range(1, 500))
    print(f"\nworker {victim} killed: {len(failed)} invocations failed with WorkerLost, {len(ok)} succeeded")


@pytest.mark.timeout(300)
def test_scale_down_churn_under_bursty_load_loses_and_doubles_nothing(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = own_platform({"faas.cluster.maximum": 2, "faas.cluster.idle-timeout": "1s"})
    ledger = tmp_path / "ledger"
    fn = _ledger_function(ledger, retries=0)
    rng = random.Random(7)
    sent = 0
    bursts = 0
    retirements_before = platform._retirements
    deadline = time.monotonic() + CHURN_SECONDS
    while time.monotonic() < deadline:
        size = rng.randint(5, 40)
        items = list(range(sent, sent + size))
        assert fn.map(items) == [2 * x for x in items]
        sent += size
        bursts += 1
        # Gaps around the keep-alive: some bursts land as the workers are being retired.
        time.sleep(rng.uniform(0.8, 1.4))
    runs = Counter(int(line) for line in ledger.read_text().split())
    assert sorted(runs) == list(range(sent)) and max(runs.values()) == 1
    retirements = platform._retirements - retirements_before
    assert retirements >= 2, f"only {retirements} scale-downs happened: no churn was tested"
    print(f"\n{bursts} bursts, {sent} invocations over {CHURN_SECONDS:.0f} s, {retirements} scale-downs to zero")
