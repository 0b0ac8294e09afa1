"""Functions that misbehave end with a clear error (or are cleaned up after) and the platform runs on for others."""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasMemoryError, RemoteError, function
from jupyter_faas.dispatch.platform import Platform
from tests.helpers import run_ok, wait_for


@function(name="bystander")
def bystander(x: int) -> int:
    return x + 1


def still_serving() -> None:
    """Another function on the same platform is unaffected."""
    assert bystander.map(range(50)) == list(range(1, 51))


def test_a_fork_whose_child_returns_does_not_answer_twice(platform: Platform) -> None:
    @function(name="forks")
    def forks() -> str:
        import os

        pid = os.fork()
        if pid == 0:
            return "from the child"  # must never reach the caller, nor confuse the worker's stream
        os.waitpid(pid, 0)
        return "from the parent"

    assert [forks() for _ in range(5)] == ["from the parent"] * 5
    still_serving()


def test_processes_a_call_leaves_running_are_stopped_when_it_returns(platform: Platform) -> None:
    @function(name="leaves_a_child")
    def leaves_a_child() -> int:
        import os
        import time

        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        return pid

    child = leaves_a_child()
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             timeout=15, message="the stray child to be stopped")  # fmt: skip
    still_serving()


def test_a_memory_leak_is_stopped_at_its_limit(platform: Platform) -> None:
    @function(name="leaks", memory="128MB")
    def leaks() -> int:
        import time

        hoard = []
        while True:
            hoard.append(bytearray(8 * 2**20))
            time.sleep(0.001)

    with pytest.raises(FaasMemoryError, match="went over its memory limit of 128"):
        leaks()
    still_serving()


def test_100_mb_to_stdout_is_cut_at_the_output_limit(platform: Platform) -> None:
    @function(name="floods", timeout="60s")
    def floods() -> str:
        import sys

        chunk = "y" * 2**16
        for _ in range(1600):  # 100 MiB
            sys.stdout.write(chunk)
        return "survived"

    started = time.monotonic()
    assert floods() == "survived"
    output = floods.invocations[-1].output
    assert output.startswith("y" * 1000) and "[output cut: 104,792,064 more bytes were dropped" in output
    assert len(output) < 70_000
    print(f"\n100 MiB to stdout: {time.monotonic() - started:.2f} s, {len(output):,} characters kept")
    still_serving()


def test_a_result_that_cannot_be_pickled_is_a_clear_error(platform: Platform) -> None:
    @function(name="unpicklable")
    def unpicklable() -> object:
        import threading

        return threading.Lock()

    with pytest.raises(RemoteError, match=r"TypeError: the result \(lock\) cannot be sent back"):
        unpicklable()
    still_serving()


@pytest.mark.timeout(180)
def test_a_1_gb_result_is_stopped_at_the_memory_limit(platform: Platform) -> None:
    @function(name="huge_result", memory="512MB", timeout="60s")
    def huge_result() -> bytes:
        return b"x" * 2**30

    with pytest.raises(FaasMemoryError, match="memory limit of 512"):
        huge_result()
    still_serving()


def test_a_capture_over_the_limit_is_refused_naming_the_variable_and_its_size(shell: InteractiveShell) -> None:
    shell.user_ns["big_array"] = np.ones(500 * 10**6 // 8)  # 500 MB
    started = time.monotonic()
    with pytest.raises(UsageError) as refused:
        shell.run_cell_magic("faas", "uses_big", "big_array.sum()")
    message = str(refused.value)
    assert "captures big_array (ndarray, 476.84 MiB)" in message
    assert "faas.capture.max-bytes is 64MiB" in message and "pass the path" in message
    print(f"\nrefused a 500 MB capture in {time.monotonic() - started:.2f} s")
    run_ok(shell, "import dask\n_ctx = dask.config.set({'faas.capture.max-bytes': '1GiB'})")
    try:
        run_ok(shell, "%%faas uses_big\nbig_array.sum()")  # within a raised limit it is accepted
    finally:
        run_ok(shell, "_ctx.__exit__(None, None, None)")
        del shell.user_ns["big_array"]
