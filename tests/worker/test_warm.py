"""Warm state on the real embedded cluster: a class's setup() once per sandbox, init_ms, setup errors and limits."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasMemoryError, FaasTimeout, function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import DefinitionError


def setups_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_setup_runs_once_per_sandbox_and_its_instance_serves_every_later_call(
    platform: Platform, tmp_path: Path
) -> None:
    setups = tmp_path / "setups"

    @function(timeout="30s")
    class Warm:
        def setup(self) -> None:
            with open(setups, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(0.2)
            self.pid = os.getpid()
            self.calls = 0

        def __call__(self, x: int) -> tuple[int, int, int]:
            self.calls += 1
            return self.pid, os.getpid(), self.calls

    first = [Warm(x) for x in range(4)]
    mapped = Warm.map(range(40))
    served = first + mapped
    # Each answer came from the instance set up in the very process that ran it.
    assert all(own == running for own, running, _ in served)
    pids = setups_in(setups)
    # Once per sandbox: no process ran setup twice, and every process that served a call had run it.
    assert len(pids) == len(set(pids))
    assert {running for _, running, _ in served} == set(pids)
    # The instance lives on: each sandbox's calls counted up from 1, on the instance its setup made.
    by_sandbox: dict[int, list[int]] = {}
    for _, running, calls in first:
        by_sandbox.setdefault(running, []).append(calls)
    assert all(counts == list(range(1, len(counts) + 1)) for counts in by_sandbox.values()), by_sandbox
    assert len(pids) < len(served)  # so sandboxes served several calls each, on one setup
    records = Warm.invocations
    with_init = [record for record in records if record.init_ms is not None]
    assert len(with_init) == len(pids)
    assert all(record.cold_start and record.init_ms >= 200 for record in with_init)
    assert records[0].init_ms is not None and records[0].cold_start
    assert any(record.init_ms is None and not record.cold_start for record in records)
    # The call's own duration does not include setup.
    assert records[0].duration_ms is not None and records[0].duration_ms < records[0].init_ms


SEEN: list[int] = []


@function
class Counts:
    def setup(self) -> None:
        self.count = 0

    def __call__(self) -> tuple[int, int, int, int]:
        global BUMPED
        self.count += 1
        SEEN.append(self.count)
        BUMPED = globals().get("BUMPED", 0) + 1
        return len(SEEN), BUMPED, self.count, os.getpid()


def test_module_globals_are_fresh_on_every_call_and_only_the_instance_survives(platform: Platform) -> None:
    results = [Counts() for _ in range(6)]
    # The captured list and the module global are new each call; the instance's count is not.
    assert [(seen, bumped) for seen, bumped, _, _ in results] == [(1, 1)] * 6
    by_sandbox: dict[int, list[int]] = {}
    for _, _, count, pid in results:
        by_sandbox.setdefault(pid, []).append(count)
    assert all(counts == list(range(1, len(counts) + 1)) for counts in by_sandbox.values()), by_sandbox
    assert any(len(counts) > 1 for counts in by_sandbox.values()), by_sandbox
    assert SEEN == []


def test_a_failing_setup_fails_that_call_with_its_own_traceback_and_the_next_call_tries_again(
    platform: Platform, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"

    @function(retries=0)
    class Flaky:
        def setup(self) -> None:
            self.greeting = load_greeting(ready)

        def __call__(self, name: str) -> str:
            return f"{self.greeting} {name}"

    with pytest.raises(FileNotFoundError) as raised:
        Flaky("ann")
    remote = str(raised.value.__cause__)
    # setup's own traceback: the line in setup and the helper it called, not the platform's frames.
    assert "self.greeting = load_greeting(ready)" in remote and "in setup" in remote
    assert "jupyter_faas/worker" not in remote
    failed = Flaky.invocations[-1]
    assert failed.status == "error" and failed.error == "FileNotFoundError" and failed.init_ms is not None
    ready.write_text("hello")
    assert Flaky("bob") == "hello bob"
    assert Flaky.invocations[-1].init_ms is not None and Flaky.invocations[-1].cold_start


def load_greeting(path: Path) -> str:
    with open(path) as f:
        return f.read()


def test_setup_has_its_own_time_limit(platform: Platform) -> None:
    @function(timeout="30s", setup_timeout="0.5s")
    class Slow:
        def setup(self) -> None:
            time.sleep(20)

        def __call__(self) -> int:
            return 1

    began = time.monotonic()
    with pytest.raises(FaasTimeout, match="setup timeout of 0.5s"):
        Slow()
    assert time.monotonic() - began < 10
    assert Slow.invocations[-1].status == "timeout"
    assert "setup timeout 0.5s" in Slow.limits.describe()


def test_a_warm_class_over_its_memory_limit_is_stopped_and_the_next_call_sets_up_again(
    platform: Platform, tmp_path: Path
) -> None:
    setups = tmp_path / "setups"

    @function(memory="128MB", timeout="30s")
    class Hungry:
        def setup(self) -> None:
            with open(setups, "a") as f:
                f.write(f"{os.getpid()}\n")

        def __call__(self, megabytes: int) -> int:
            block = bytearray(megabytes * 2**20)
            time.sleep(0.5)
            return len(block)

    Hungry(1)
    with pytest.raises(FaasMemoryError):
        Hungry(400)
    assert Hungry(1) == 2**20
    pids = setups_in(setups)
    assert len(pids) == len(set(pids)) >= 2


def test_local_runs_setup_once_in_this_process() -> None:
    @function
    class Local:
        def setup(self) -> None:
            self.pid = os.getpid()
            self.setups = getattr(self, "setups", 0) + 1
            self.calls = 0

        def __call__(self, x: int) -> tuple[int, int, int]:
            self.calls += 1
            return x + self.calls, self.setups, self.pid

    assert [Local.local(10) for _ in range(3)] == [(11, 1, os.getpid()), (12, 1, os.getpid()), (13, 1, os.getpid())]


def test_a_class_needs_a_call_method_and_hooks_that_take_only_self() -> None:
    with pytest.raises(DefinitionError, match="needs a __call__ method"):

        @function
        class NoCall:
            def setup(self) -> None:
                pass

    with pytest.raises(DefinitionError, match="takes only self"):

        @function
        class BadSetup:
            def setup(self, model: str) -> None:
                pass

            def __call__(self) -> None:
                pass

    with pytest.raises(DefinitionError, match="constructible with no arguments"):

        @function
        class NeedsArgs:
            def __init__(self, path: str) -> None:
                self.path = path

            def __call__(self) -> None:
                pass


def test_the_magic_binds_a_class_with_the_signature_of_its_call(shell: InteractiveShell, platform: Platform) -> None:
    shell.run_cell_magic(
        "faas",
        "--setup-timeout 20s",
        "import os\nSCALE = 3\n\nclass Scaler:\n    def setup(self):\n        self.factor = SCALE\n\n"
        "    def __call__(self, x: int) -> int:\n        return x * self.factor\n",
    )
    scaler = shell.user_ns["Scaler"]
    assert str(scaler.signature) == "(x: int) -> int"
    assert scaler(4) == 12
    assert scaler.map([1, 2, 3]) == [3, 6, 9]
    assert Counter(r.init_ms is not None for r in scaler.invocations)[True] >= 1
    with pytest.raises(UsageError, match="setup-timeout"):
        shell.run_cell_magic("faas", "--setup-timeout never", "class C:\n    def __call__(self):\n        return 1\n")


@function(isolation="fresh", timeout="30s")
class ForkedFromWarm:
    def setup(self) -> None:
        print("loading the model")
        self.setup_pid = os.getpid()
        self.calls = 0

    def __call__(self) -> tuple[int, int, int]:
        self.calls += 1
        return self.setup_pid, os.getpid(), self.calls


@function(isolation="fresh", timeout="30s")
def forked_items(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


def test_with_fresh_isolation_setup_runs_once_and_each_call_forks_from_the_warm_instance(platform: Platform) -> None:
    results = [ForkedFromWarm() for _ in range(3)]
    # Each call ran in a process forked for it, from the sandbox that ran setup once; what a call changes
    # on its copy of the instance is thrown away with it.
    assert all(setup_pid != pid for setup_pid, pid, _ in results)
    assert [calls for _, _, calls in results] == [1, 1, 1]
    assert len({setup_pid for setup_pid, _, _ in results}) <= 2
    records = ForkedFromWarm.invocations
    first_of_sandbox = [record for record in records if record.init_ms is not None]
    assert first_of_sandbox and all("loading the model" in (record.output or "") for record in first_of_sandbox)
    assert all("loading the model" not in (record.output or "") for record in records if record.init_ms is None)
    assert list(forked_items(3)) == [0, 1, 2]


def test_a_new_version_replaces_the_old_instance_and_runs_its_teardown(platform: Platform, tmp_path: Path) -> None:
    log = tmp_path / "log"

    def define(version: int) -> Any:
        @function(name="Versioned", timeout="30s")
        class Versioned:
            def setup(self) -> None:
                with open(log, "a") as f:
                    f.write(f"setup {version} {os.getpid()}\n")

            def teardown(self) -> None:
                with open(log, "a") as f:
                    f.write(f"teardown {version} {os.getpid()}\n")

            def __call__(self, x: int) -> int:
                return os.getpid()

        return Versioned

    first, second = define(1), define(2)
    assert first.version != second.version
    ran_first = set(first.map(range(30)))
    ran_second = set(second.map(range(30)))
    lines = log.read_text().split("\n")
    # Every sandbox that ran both versions tore the first one down when the second came.
    for pid in ran_first & ran_second:
        assert f"teardown 1 {pid}" in lines, lines
    assert ran_first & ran_second
    assert not [line for line in lines if line.startswith("teardown 2")]


class Base:
    def setup(self) -> None:
        self.loaded = ["base"]


@function
class Derived(Base):
    def setup(self) -> None:
        super().setup()
        self.loaded.append("derived")

    def __call__(self) -> list[str]:
        return [*self.loaded, type(self).__name__, str(isinstance(self, Base))]


def test_a_warm_class_may_extend_a_base_and_call_super(platform: Platform) -> None:
    assert Derived() == ["base", "derived", "Derived", "True"]
    assert Derived() == ["base", "derived", "Derived", "True"]
    assert Derived.local() == ["base", "derived", "Derived", "True"]
