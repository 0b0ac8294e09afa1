"""The platform on a real elastic cluster: scaling, keep-alive, limits, retries, and nothing lost or doubled."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dask
import pytest

from jupyter_faas import FaasError, FaasMemoryError, FaasTimeout, WorkerLost, function
from jupyter_faas.dispatch.platform import Platform
from tests.helpers import wait_for


@function
def square(x: int) -> int:
    return x * x


@function(timeout="60s")
def nap(seconds: float) -> tuple[float, float]:
    began = time.time()
    time.sleep(seconds)
    return began, time.time()


def test_scale_to_zero_after_the_idle_timeout_then_scale_from_zero(platform: Platform) -> None:
    assert square(2) == 4
    assert platform.workers >= 1
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        wait_for(
            lambda: platform.workers == 0 and platform.scale_events[-1][1] == 0, timeout=30, message="scale to zero"
        )
    # From zero, an invocation starts a worker at once and is held until it is ready.
    assert square(3) == 9
    record = square.invocations[-1]
    assert record.cold_start
    assert platform.workers >= 1


def test_a_warm_call_is_not_a_cold_start(platform: Platform) -> None:
    square(1)
    square(1)
    for _ in range(3):
        square(2)
    assert not square.invocations[-1].cold_start


def test_a_burst_from_zero_asks_for_the_maximum_number_of_workers(platform: Platform) -> None:
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        wait_for(lambda: platform.workers == 0, timeout=30, message="scale to zero")
    events_before = len(platform.scale_events)
    futures = [nap.submit(1.5) for _ in range(6)]
    wait_for(lambda: platform.workers == min(6, platform.maximum), timeout=30, message="burst scale-up")
    assert all(len(f.result(timeout=60)) == 2 for f in futures)
    assert max(n for _, n in platform.scale_events[events_before:]) == platform.maximum


def test_the_hard_timeout_stops_the_call_and_the_next_one_works(platform: Platform) -> None:
    @function(timeout="1s")
    def stuck() -> None:
        time.sleep(120)

    square(1)  # a worker is up, so the time below is the timeout's, not a cold start's
    began = time.monotonic()
    with pytest.raises(FaasTimeout, match=r"^stuck ran past its timeout of 1s and was stopped$"):
        stuck()
    assert time.monotonic() - began < 1 + 2
    assert stuck.invocations[-1].status == "timeout"
    assert square(5) == 25


def test_the_memory_limit_is_a_memory_error_naming_the_limit(platform: Platform) -> None:
    @function(memory="128MB")
    def hog() -> int:
        data = b"x" * (400 * 2**20)
        time.sleep(2)
        return len(data)

    with pytest.raises(FaasMemoryError, match="memory limit of 128MB"):
        hog()
    assert hog.invocations[-1].status == "memory"
    assert hog.invocations[-1].error == "FaasMemoryError"
    assert square(6) == 36


def test_the_concurrency_limit_is_honoured(platform: Platform) -> None:
    limited = function(concurrency=2, timeout="60s", name="limited_nap")(nap._definition.load())
    spans = [f.result(timeout=120) for f in [limited.submit(0.4) for _ in range(8)]]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 2  # reached, and never passed, though the cluster has room for more
    assert len(limited.invocations) == 8


def test_retries_rerun_after_an_exception(platform: Platform, tmp_path: Path) -> None:
    @function(retries=2)
    def flaky(marker: str) -> str:
        attempts = len(os.listdir(marker))
        open(os.path.join(marker, str(attempts)), "w").close()
        if attempts < 2:
            raise RuntimeError(f"attempt {attempts} fails")
        return f"succeeded on attempt {attempts}"

    assert flaky(str(tmp_path)) == "succeeded on attempt 2"
    assert sorted(os.listdir(tmp_path)) == ["0", "1", "2"]
    record = flaky.invocations[-1]
    assert record.status == "ok" and record.attempts == 3


def test_without_retries_a_failure_runs_once(platform: Platform, tmp_path: Path) -> None:
    @function
    def fails_once(marker: str) -> None:
        open(os.path.join(marker, str(len(os.listdir(marker)))), "w").close()
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        fails_once(str(tmp_path))
    assert os.listdir(tmp_path) == ["0"]


@function(retries=1)
def kill_my_worker_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getppid(), 9)  # the sandbox's parent is the worker process
        time.sleep(30)
    return "survived"


def test_a_lost_worker_is_retried(platform: Platform, tmp_path: Path) -> None:
    square(1)
    assert kill_my_worker_once(str(tmp_path / "marker")) == "survived"
    assert kill_my_worker_once.invocations[-1].attempts == 2


def test_a_lost_worker_without_retries_is_a_clear_error_and_runs_once(platform: Platform, tmp_path: Path) -> None:
    @function
    def kill_my_worker(marker: str) -> None:
        with open(marker, "a") as f:
            f.write("ran\n")
        os.kill(os.getppid(), 9)
        time.sleep(30)

    square(1)
    marker = tmp_path / "runs"
    with pytest.raises(WorkerLost, match="kill_my_worker: the worker running it was lost"):
        kill_my_worker(str(marker))
    assert marker.read_text() == "ran\n"
    assert square(4) == 16


def test_nothing_is_lost_or_doubled_across_scale_down(platform: Platform, tmp_path: Path) -> None:
    @function(retries=2)
    def log_once(path: str, n: int) -> int:
        with open(path, "a") as f:
            f.write(f"{n}\n")
        return n

    path = str(tmp_path / "log")
    results: list[int] = []
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        for burst in range(4):
            items = range(burst * 50, burst * 50 + 50)
            results += log_once.map([path] * 50, items)
            time.sleep(1.2)  # a gap past the keep-alive, so workers retire between bursts
    assert results == list(range(200))
    assert sorted(int(line) for line in Path(path).read_text().split()) == list(range(200))
    assert all(r.attempts == 1 for r in log_once.invocations)
    assert 0 in [n for _, n in platform.scale_events]


def test_shutdown_then_platform_starts_a_new_one(own_platform: object) -> None:
    import jupyter_faas

    first = jupyter_faas.platform()
    assert square(2) == 4
    first.shutdown()
    assert first.workers == 0
    with pytest.raises(FaasError, match="shut down"):
        first.start()
    assert jupyter_faas.platform() is not first
    assert square(3) == 9


def test_an_invocation_that_arrives_while_workers_retire_is_held_then_runs(platform: Platform) -> None:
    square(1)
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        # Take the retirement window ourselves (the keep-alive thread may hold it first; then we wait).
        wait_for(platform.begin_retire, timeout=30, message="the retirement window")
        try:
            future = square.submit(12)
            assert not future.done()  # held: no worker may receive it while workers retire
        finally:
            platform.end_retire()
        assert future.result(timeout=60) == 144


def test_shutdown_with_work_in_flight_ends_every_invocation(own_platform: object) -> None:
    import jupyter_faas

    platform = jupyter_faas.platform()
    futures = [nap.submit(0.05) for _ in range(300)]
    wait_for(lambda: any(f.done() for f in futures), timeout=60, message="the first result")
    platform.shutdown()
    wait_for(lambda: all(f.done() for f in futures), timeout=60, message="every invocation to end")
    outcomes = [f.exception() for f in futures]
    assert all(e is None or isinstance(e, FaasError) for e in outcomes)
    assert any(isinstance(e, FaasError) for e in outcomes)  # some were cut short, and said so


def test_plain_dask_work_on_the_platforms_client_keeps_workers_alive(platform: Platform) -> None:
    square(1)
    with dask.config.set({"faas.cluster.idle-timeout": "1s"}):
        task = platform.client.submit(time.sleep, 3, pure=False)
        assert task.result(timeout=60) is None
        assert platform.workers >= 1


@function(timeout="60s")
def report_pid_then_nap(path: str, seconds: float) -> str:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def test_a_kernel_interrupt_does_not_reach_invocations_or_workers(platform: Platform, tmp_path: Path) -> None:
    # Jupyter interrupts a kernel by sending SIGINT to its process group; deliver it to each process directly.
    import signal

    square(1)
    worker_pids = set(platform.client.run(os.getpid).values())
    pid_file = tmp_path / "pid"
    future = report_pid_then_nap.submit(str(pid_file), 1.5)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30, message="the invocation to start")
    os.kill(int(pid_file.read_text()), signal.SIGINT)
    for pid in worker_pids:
        os.kill(pid, signal.SIGINT)
    assert future.result(timeout=60) == "finished"
    assert report_pid_then_nap.invocations[-1].status == "ok"
    assert set(platform.client.run(os.getpid).values()) == worker_pids  # no worker died
    assert square(3) == 9


@function(concurrency=1, timeout="60s")
def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_queue_timeout_ends_an_invocation_that_never_got_a_slot_and_it_never_runs(platform: Platform) -> None:
    from jupyter_faas.dispatch.platform import pack_calls
    from jupyter_faas.errors import NoCapacity

    definition = hold._definition
    busy = platform.invoke(definition, pack_calls("hold", [((2.0,), {})]))
    began = time.monotonic()
    waiting = platform.invoke(definition, pack_calls("hold", [((0.0,), {})]), queue_timeout=0.3)
    with pytest.raises(NoCapacity, match="no free slot within the queue timeout"):
        waiting.result(timeout=30)
    # Ended at its deadline (give or take the controller's tick), not when the slot freed.
    assert time.monotonic() - began < 1.5
    assert busy.result(timeout=30) == 2.0
    # The expired one was dropped before it was sent: only the first invocation has a record.
    ids = [record.id for record in platform.records("hold")]
    assert busy.id in ids and waiting.id not in ids


def test_a_queue_timeout_does_not_apply_once_the_invocation_was_sent(platform: Platform) -> None:
    from jupyter_faas.dispatch.platform import pack_calls

    future = platform.invoke(nap._definition, pack_calls("nap", [((1.0,), {})]), queue_timeout=0.3)
    began, ended = future.result(timeout=30)
    assert ended - began >= 1.0


def test_a_kernel_lease_keeps_the_keep_alive_from_retiring_and_is_refused_during_retirement(
    own_platform: object,
) -> None:
    platform = own_platform({"faas.cluster.idle-timeout": "1s"})  # type: ignore[operator]
    # A kernel sharing this cluster says it is busy: the keep-alive must not retire workers under it.
    assert platform.note_lease("kernel-a", True, 1)["ok"] is True
    assert square(2) == 4
    wait_for(platform._keepalive_expired, timeout=10, message="the keep-alive to pass")
    assert platform.begin_retire() is False
    assert platform.workers >= 1
    # Idle again, the keep-alive runs out and the workers retire.
    platform.note_lease("kernel-a", False, 0)
    wait_for(lambda: platform.workers == 0 and platform._retirements >= 1, timeout=30, message="scale to zero")
    # While a retirement is under way, a kernel is told to wait (ok False); afterwards it may go on.
    wait_for(platform.begin_retire, timeout=10, message="a retirement to begin")
    assert platform.note_lease("kernel-a", True, 1)["ok"] is False
    platform.end_retire()
    assert platform.note_lease("kernel-a", True, 1)["ok"] is True
