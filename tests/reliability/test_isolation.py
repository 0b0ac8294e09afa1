"""On one worker with one slot, a call leaves nothing behind for the next: process state, output, a damaged sandbox."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import dask
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasMemoryError, FaasTimeout, RemoteError, function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import LimitError


@pytest.fixture(scope="module")
def one_slot() -> Iterator[Platform]:
    """A platform of one worker with one slot: every call runs in the same sandbox, in turn."""
    _platform.current(start=False).shutdown()
    with dask.config.set({"faas.cluster.maximum": 1, "faas.cluster.slots-per-worker": 1}):
        platform = _platform.current(start=True)
        try:
            yield platform
        finally:
            platform.shutdown()


@function(name="looks_around")
def looks_around() -> dict:
    import os
    import signal
    import sys

    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "cwd": os.getcwd(),
        "umask": umask,
        "env": os.environ.get("FAAS_LEFT_BEHIND"),
        "path": sys.path[:3],
        "recursion": sys.getrecursionlimit(),
        "sigterm": repr(signal.getsignal(signal.SIGTERM)),
        "sigusr1": repr(signal.getsignal(signal.SIGUSR1)),
        "stdout": type(sys.stdout).__name__,
        "len": len([1, 2, 3]),
        "argv": sys.argv[-1:],
        "itimer": signal.getitimer(signal.ITIMER_REAL),
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    }


@function(name="sleeps_past_an_alarm")
def sleeps_past_an_alarm(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "slept"


def test_what_a_call_changes_in_its_process_the_next_call_does_not_see(one_slot: Platform, tmp_path: object) -> None:
    @function(name="changes_everything")
    def changes_everything(folder: str) -> str:
        import io
        import os
        import signal
        import sys

        os.chdir(folder)
        os.umask(0o077)
        os.environ["FAAS_LEFT_BEHIND"] = "left"
        sys.path.insert(0, "/nowhere/left/behind")
        sys.setrecursionlimit(123)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, lambda *_: None)
        sys.stdout = io.StringIO()
        sys.argv.append("left")
        # An alarm that would fire during the next call, and a blocked signal.
        signal.signal(signal.SIGALRM, lambda *_: None)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
        return os.getcwd()

    before = looks_around()
    assert changes_everything(str(tmp_path)) == str(tmp_path)
    after = looks_around()
    assert after == before
    # Past the alarm's time, in the same sandbox: it was disarmed, and the call runs to its end.
    assert sleeps_past_an_alarm(1.5) == "slept"


def test_a_thread_left_running_never_writes_into_the_next_calls_output(one_slot: Platform) -> None:
    @function(name="leaves_a_chatty_thread")
    def leaves_a_chatty_thread() -> str:
        import threading
        import time

        def chatter() -> None:
            for _ in range(300):
                print("stray output")
                time.sleep(0.01)

        threading.Thread(target=chatter, daemon=True).start()
        time.sleep(0.05)
        return "left"

    @function(name="speaks_for_itself")
    def speaks_for_itself() -> str:
        import time

        time.sleep(0.5)
        print("my own output")
        return "spoke"

    assert leaves_a_chatty_thread() == "left"
    assert speaks_for_itself() == "spoke"
    assert speaks_for_itself.invocations[-1].output == "my own output\n"
    # What the thread wrote while its own call ran is that call's.
    assert leaves_a_chatty_thread.invocations[-1].output.startswith("stray output")


def test_a_call_that_breaks_builtins_does_not_break_the_next_call(one_slot: Platform) -> None:
    @function(name="breaks_len")
    def breaks_len() -> str:
        import builtins

        builtins.len = lambda _: 0
        return "broken"

    breaks_len()
    started = time.monotonic()
    assert looks_around()["len"] == 3
    assert time.monotonic() - started < 10


def test_a_call_cannot_hide_its_changes_from_the_cheap_checks_between_calls(one_slot: Platform) -> None:
    """Between calls the sandbox first checks cheaply whether anything changed: builtins by identity, the
    environment by os.environ's own table. A call that swaps in look-alikes must still be undone."""

    @function(name="swaps_in_look_alikes")
    def swaps_in_look_alikes() -> str:
        import builtins
        import os

        class EqualToAll:
            def __eq__(self, other: object) -> bool:
                return True

            def __hash__(self) -> int:
                return 0

            def __call__(self, *args: object) -> int:
                return 0

        builtins.len = EqualToAll()
        # A new table behind os.environ, equal to the old one but for one variable.
        table = dict(os.environ._data)  # type: ignore[attr-defined]
        table[b"FAAS_LEFT_BEHIND"] = b"left"
        os.environ._data = table  # type: ignore[attr-defined]
        return "swapped"

    assert swaps_in_look_alikes() == "swapped"
    seen = looks_around()
    assert seen["len"] == 3
    assert seen["env"] is None


def test_a_sandbox_that_breaks_its_protocol_is_replaced_and_the_next_call_answers(one_slot: Platform) -> None:
    @function(name="scribbles_on_its_channel", retries=0)
    def scribbles_on_its_channel() -> int:
        import os
        import struct
        import sys

        # The sandbox's socket to the worker is its last argument: a frame that is not an answer.
        os.write(int(sys.argv[-1]), struct.pack("!i", 5) + b"hello")
        return os.getpid()

    with pytest.raises(Exception, match="broke its protocol"):
        scribbles_on_its_channel()
    started = time.monotonic()
    assert looks_around()["len"] == 3
    assert time.monotonic() - started < 10


def test_warm_calls_keep_imported_modules_as_documented(one_slot: Platform) -> None:
    @function(name="patches_json")
    def patches_json() -> bool:
        import json

        json.faas_left_behind = True  # type: ignore[attr-defined]
        return True

    @function(name="looks_at_json")
    def looks_at_json() -> bool:
        import json

        return getattr(json, "faas_left_behind", False)

    assert patches_json()
    # Modules and their attributes persist within one warm sandbox, as in a warm Lambda container.
    assert looks_at_json()


def test_a_fresh_call_runs_in_its_own_process_and_leaves_nothing(one_slot: Platform) -> None:
    @function(name="patches_fresh", isolation="fresh")
    def patches_fresh() -> int:
        import json
        import os

        json.faas_fresh_marker = True  # type: ignore[attr-defined]
        os.environ["FAAS_FRESH_LEFT"] = "left"
        print("fresh output", os.getpid())
        return os.getpid()

    @function(name="sees_fresh_marker", isolation="fresh")
    def sees_fresh_marker() -> tuple[bool, str | None]:
        import json
        import os

        return getattr(json, "faas_fresh_marker", False), os.environ.get("FAAS_FRESH_LEFT")

    pids = [patches_fresh() for _ in range(3)]
    assert len(set(pids)) == 3
    assert patches_fresh.invocations[-1].output == f"fresh output {pids[-1]}\n"
    assert sees_fresh_marker() == (False, None)
    assert looks_around()["env"] is None


def test_fresh_calls_keep_their_limits(one_slot: Platform) -> None:
    @function(name="fresh_sleeper", isolation="fresh", timeout="1s")
    def fresh_sleeper() -> None:
        import time

        time.sleep(60)

    @function(name="fresh_hoarder", isolation="fresh", memory="128MB")
    def fresh_hoarder() -> None:
        import time

        hoard = []
        while True:
            hoard.append(bytearray(8 * 2**20))
            time.sleep(0.001)

    @function(name="fresh_crasher", isolation="fresh")
    def fresh_crasher() -> None:
        import os

        os._exit(3)

    with pytest.raises(FaasTimeout):
        fresh_sleeper()
    with pytest.raises(FaasMemoryError):
        fresh_hoarder()
    with pytest.raises(RemoteError, match="exited with code 3"):
        fresh_crasher()
    assert looks_around()["len"] == 3


@pytest.mark.parametrize("value", ["cold", "", "FRESHER", 1])
def test_a_bad_isolation_is_an_error_naming_it(value: object) -> None:
    with pytest.raises(LimitError, match="isolation: expected one of warm, fresh"):

        @function(isolation=value)
        def f() -> None:
            pass


def test_a_bad_isolation_in_the_magic_is_a_usage_error_naming_it(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="--isolation: expected one of warm, fresh"):
        shell.run_cell_magic("faas", "bad_isolation --isolation cold", "1")


def test_fresh_costs_little_over_warm_per_call(one_slot: Platform) -> None:
    @function(name="trivial_warm")
    def trivial_warm() -> int:
        return 1

    @function(name="trivial_fresh", isolation="fresh")
    def trivial_fresh() -> int:
        return 1

    medians = {}
    for fn in (trivial_warm, trivial_fresh):
        fn()
        times = []
        for _ in range(40):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        medians[fn.name] = statistics.median(times) * 1000
    print(f"\np50 of a trivial call: warm {medians['trivial_warm']:.2f} ms, fresh {medians['trivial_fresh']:.2f} ms")
    assert medians["trivial_fresh"] < medians["trivial_warm"] + 100
