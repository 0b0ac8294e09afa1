"""Functions that misbehave end with a clear error (or are cleaned up after) and the platform runs on for others."""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasMemoryError, FaasTimeout, RemoteError, function
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


def running_with(marker: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line holds `marker`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(marker in part for part in cmdline):
            found.append(process)
    return found


def wait_until_none_runs(marker: str) -> None:
    wait_for(lambda: not running_with(marker), timeout=20, message=f"no process running {marker}")


def test_a_subprocess_left_running_is_stopped_when_the_call_returns(platform: Platform) -> None:
    @function(name="popens")
    def popens(seconds: str) -> int:
        import subprocess

        return subprocess.Popen(["sleep", seconds]).pid

    seconds = "97.0417"  # a command line no other process has
    assert popens(seconds) > 0
    wait_until_none_runs(seconds)
    still_serving()


def test_a_cpu_bound_subprocess_is_stopped_with_its_call_on_a_timeout(platform: Platform) -> None:
    @function(name="spins", timeout="2s")
    def spins(marker: str) -> None:
        import subprocess
        import sys
        import time

        subprocess.Popen([sys.executable, "-c", "while True: pass", marker])
        time.sleep(600)

    marker = "spin-marker-5d3e1"
    with pytest.raises(FaasTimeout):
        spins(marker)
    wait_until_none_runs(marker)
    still_serving()


def test_a_double_forked_setsid_process_is_stopped_when_the_call_returns(platform: Platform) -> None:
    @function(name="daemonizes")
    def daemonizes(marker: str) -> int:
        import subprocess
        import sys
        import time

        # The classic daemon: a new session, then a second fork whose parent exits, so it is nobody's child.
        script = "import os, sys, time\nos.setsid()\nif os.fork():\n    os._exit(0)\ntime.sleep(600)\n"
        subprocess.run([sys.executable, "-c", script, marker], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Only once the daemon runs on its own does the call return.
            for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines():
                if marker in line and "ps -eo" not in line:
                    return 1
            time.sleep(0.05)
        return 0

    marker = "daemon-marker-a81c4"
    assert daemonizes(marker) == 1
    wait_until_none_runs(marker)
    still_serving()


def test_a_double_forked_setsid_process_is_stopped_on_a_timeout(platform: Platform) -> None:
    @function(name="daemonizes_then_hangs", timeout="3s")
    def daemonizes_then_hangs(marker: str) -> None:
        import subprocess
        import sys
        import time

        script = "import os, sys, time\nos.setsid()\nif os.fork():\n    os._exit(0)\nwhile True: pass\n"
        subprocess.run([sys.executable, "-c", script, marker], check=True)
        time.sleep(600)

    marker = "daemon-spin-marker-7e02b"
    with pytest.raises(FaasTimeout):
        daemonizes_then_hangs(marker)
    wait_until_none_runs(marker)
    still_serving()


def test_a_subprocess_is_stopped_with_its_call_at_the_memory_limit(platform: Platform) -> None:
    @function(name="starts_then_leaks", memory="128MB")
    def starts_then_leaks(marker: str) -> None:
        import subprocess
        import time

        subprocess.Popen(["sleep", marker])
        hoard = []
        while True:
            hoard.append(bytearray(8 * 2**20))
            time.sleep(0.001)

    marker = "96.3307"
    with pytest.raises(FaasMemoryError):
        starts_then_leaks(marker)
    wait_until_none_runs(marker)
    still_serving()
