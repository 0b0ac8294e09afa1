"""Functions that call functions, on the real embedded cluster capped at one worker of two slots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dask
import psutil
import pytest

from jupyter_faas import FaasTimeout, function
from jupyter_faas import config as _config
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import CallDepthExceeded
from jupyter_faas.record.deadletters import DeadLetters, dead_letters_path
from tests.helpers import wait_for

SANDBOX_MARK = "jupyter_faas.worker.sandbox"


@pytest.fixture(scope="module")
def small() -> Iterator[_platform.Platform]:
    """One worker of two slots at most: the smallest platform on which a waiting caller could deadlock."""
    _platform.current(start=False).shutdown()
    with dask.config.set({"faas.cluster.maximum": 1, "faas.cluster.slots-per-worker": 2}):
        platform = _platform.current(start=True)
        try:
            yield platform
        finally:
            platform.shutdown()


@function
def leaf(x: int) -> dict[str, int]:
    return {"pid": os.getpid(), "x": x}


@function(timeout="60s")
def calls_every_way(x: int) -> list[int]:
    """A call, a submit, a map and an enqueue: every way a function can call another."""
    first = leaf(x)["x"]
    submitted = leaf.submit(x + 1).result()["x"]
    mapped = [item["x"] for item in leaf.map([x + 2, x + 3])]
    leaf.enqueue(x + 4)
    return [first, submitted, *mapped]


def _sandboxes() -> list[psutil.Process]:
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if SANDBOX_MARK in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_call_from_inside_runs_on_the_callers_platform_and_starts_no_cluster(small: _platform.Platform) -> None:
    assert calls_every_way(10) == [10, 11, 12, 13]
    top = calls_every_way.invocations[-1]
    # Every call reached this platform, as an invocation of its own, with its caller's id.
    children = wait_for(lambda: len(small.children(top.id)) == 5 and small.children(top.id), message="5 children")
    assert sorted(record.function for record in children) == ["leaf"] * 5
    assert {record.parent for record in children} == {top.id}
    assert {record.root for record in children} == {top.id}
    assert sorted(record.trigger for record in children) == ["call"] * 4 + ["queue"]
    assert top.parent is None and top.root is None
    # The defect was a whole cluster (scheduler, nanny, workers) started under the sandbox: no sandbox has
    # a process under it now.
    sandboxes = _sandboxes()
    assert sandboxes, "the sandboxes of the embedded cluster are children of this process"
    for sandbox in sandboxes:
        assert sandbox.children(recursive=True) == [], sandbox.cmdline()


@function
def asks_for_a_platform() -> str:
    import jupyter_faas

    try:
        jupyter_faas.platform()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "a platform started in the sandbox"


@function(timeout="60s")
def starts_a_process_that_asks() -> tuple[int, str]:
    import subprocess
    import sys

    # What a careless function might do: a helper script that uses jupyter-faas on its own.
    done = subprocess.run(
        [sys.executable, "-c", "import jupyter_faas; jupyter_faas.platform()"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    return done.returncode, done.stderr[-2000:]


@function(timeout="60s")
def forks_a_caller() -> str:
    import multiprocessing

    def in_the_fork(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
        try:
            leaf(1)
        except Exception as e:
            queue.put(f"{type(e).__name__}: {e}")
        else:
            queue.put("the fork made a call")

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=in_the_fork, args=(queue,))
    process.start()
    answer = queue.get(timeout=50)
    process.join(timeout=10)
    return str(answer)


def test_a_sandbox_never_starts_a_platform_nor_does_what_it_starts(small: _platform.Platform) -> None:
    assert asks_for_a_platform().startswith("NestedCallError: jupyter_faas.platform() is not available inside")
    code, stderr = starts_a_process_that_asks()
    assert code != 0 and "NestedCallError" in stderr, stderr
    assert forks_a_caller().startswith("NestedCallError: leaf: a function can call other functions only from")
    for sandbox in _sandboxes():
        assert sandbox.children(recursive=True) == [], sandbox.cmdline()


@function
def middle(x: int) -> int:
    return leaf(x)["x"] + 1


@function
def top(x: int) -> int:
    return middle(x) + 1


def test_parent_and_root_ids_and_the_call_tree(small: _platform.Platform) -> None:
    assert top(1) == 3
    top_record = top.invocations[-1]
    middle_record = middle.invocations[-1]
    leaf_record = leaf.invocations[-1]
    assert (middle_record.parent, middle_record.root) == (top_record.id, top_record.id)
    assert (leaf_record.parent, leaf_record.root) == (middle_record.id, top_record.id)
    rows = small.call_tree(top_record.id)
    assert [(row["function"], row["depth"], row["parent"]) for row in rows] == [
        ("top", 0, None),
        ("middle", 1, top_record.id),
        ("leaf", 2, middle_record.id),
    ]
    # Each call starts within its caller's span, and the tree's cost is that of its three invocations.
    assert rows[0]["offset_ms"] <= rows[1]["offset_ms"] <= rows[2]["offset_ms"]
    assert all(row["status"] == "ok" and row["cost_usd"] > 0 for row in rows)


@function(timeout="60s")
def chain(n: int) -> list[int]:
    if n <= 1:
        return [os.getpid()]
    return [os.getpid(), *chain(n - 1)]


@function(timeout="60s")
def fan(n: int) -> int:
    return sum(item["x"] for item in leaf.map(range(n)))


def test_no_deadlock_when_every_slot_holds_a_waiting_caller(small: _platform.Platform) -> None:
    assert small.maximum == 1 and small._dispatcher is not None and small._dispatcher.capacity() <= 2
    # Eight callers deep on two slots: each waiting caller gives its slot back while it waits.
    pids = chain(8)
    assert len(pids) == 8 and len(set(pids)) == 8
    # Four callers at once, each fanning out over 50 calls: all four slots' worth of callers wait.
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fan, [50] * 4)) == [sum(range(50))] * 4


@function(timeout="60s")
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@function(timeout="2s", retries=0)
def hurried() -> str:
    return sleepy(30)


def test_a_call_gets_at_most_the_time_its_caller_has_left(small: _platform.Platform) -> None:
    began = time.monotonic()
    with pytest.raises(FaasTimeout):
        hurried()
    assert time.monotonic() - began < 10
    child = wait_for(lambda: [r for r in sleepy.invocations if r.parent == hurried.invocations[-1].id])[-1]
    # Its own timeout is 60 s; its caller had under 2 s left.
    assert child.status == "timeout"
    assert child.duration_ms is not None and child.duration_ms < 2500


@function(timeout="30s", concurrency=1)
def one_at_a_time(i: int) -> int:
    time.sleep(0.5)
    return i


@function(timeout="2s", retries=0)
def spawner() -> None:
    for i in range(12):
        one_at_a_time.submit(i)
    time.sleep(30)


def test_a_stopped_caller_cancels_its_calls_not_yet_started(small: _platform.Platform) -> None:
    before = len(one_at_a_time.invocations)
    with pytest.raises(FaasTimeout):
        spawner()
    gate = small._gates["one_at_a_time"]
    wait_for(lambda: gate.running == 0 and not gate.waiting, timeout=30, message="the calls under way to end")
    ran = len(one_at_a_time.invocations) - before
    # One at a time, 0.5 s each, for the 2 s the caller lived (and the one running when it was stopped).
    assert 1 <= ran <= 6, ran


@function(timeout="60s")
def forever(n: int) -> int:
    return forever(n + 1)


def test_runaway_recursion_stops_at_the_depth_limit_naming_the_chain(small: _platform.Platform) -> None:
    with dask.config.set({"faas.compose.max-depth": 4}):
        began = time.monotonic()
        with pytest.raises(CallDepthExceeded, match=r"faas.compose.max-depth = 4: forever \(5 times\)"):
            forever(0)
        assert time.monotonic() - began < 15
    assert forever.invocations[-1].status == "error"


@function
def refuses(x: int) -> int:
    raise ValueError(f"no {x}")


@function
def catches(x: int) -> str:
    try:
        refuses(x)
    except ValueError as e:
        return f"caught {e}"
    return "nothing raised"


def test_a_calls_error_reaches_its_caller_as_itself(small: _platform.Platform) -> None:
    assert catches(7) == "caught no 7"
    assert refuses.invocations[-1].status == "error"
    assert refuses.invocations[-1].parent == catches.invocations[-1].id


@function(secrets=["FAAS_COMPOSE_PLANTED"])
def reads_the_secret() -> int:
    return len(os.environ["FAAS_COMPOSE_PLANTED"])


@function
def calls_the_secret_reader() -> int:
    return int(reads_the_secret())


@function
def makes_up_a_secret_reader() -> str:
    from jupyter_faas import function as define

    @define(secrets=["FAAS_COMPOSE_PLANTED"])
    def steal() -> str:
        return os.environ["FAAS_COMPOSE_PLANTED"]

    try:
        return str(steal())
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def test_secrets_reach_only_functions_defined_where_the_platform_runs(
    small: _platform.Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAAS_COMPOSE_PLANTED", "planted-value")
    assert calls_the_secret_reader() == len("planted-value")
    # Code in a sandbox defining its own function that asks for the platform's variables gets nothing.
    answer = makes_up_a_secret_reader()
    assert "planted-value" not in answer
    assert answer.startswith("NestedCallError: steal declares secrets (FAAS_COMPOSE_PLANTED)"), answer


def test_outside_a_sandbox_platform_and_calls_work_as_before(small: _platform.Platform) -> None:
    # The guard is the sandbox's own variable: this process has none, so it has its platform.
    assert os.environ.get("JUPYTER_FAAS_SANDBOX") is None
    assert _platform.calling() is small
    code = "import jupyter_faas.dispatch.platform as p; print(type(p.calling()).__name__)"
    env = {**os.environ, "JUPYTER_FAAS_SANDBOX": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "CallerPlatform", done.stderr


def test_local_recursion_stays_local() -> None:
    # fn.local() runs here: its own name is itself here too, not a call to the platform.
    assert chain.local(3) == [os.getpid()] * 3


@function(retries=0)
def always_fails(x: int) -> None:
    raise ValueError(f"queued {x} failed")


@function
def queues_a_failure(x: int) -> str:
    return always_fails.enqueue(x)


def test_a_call_queued_from_inside_that_fails_for_good_is_a_dead_letter(small: _platform.Platform) -> None:
    letter_id = queues_a_failure(41)
    letters = DeadLetters(dead_letters_path(_config.state_dir()))
    letter = wait_for(lambda: letters.get(letter_id), message="the dead letter")
    assert letter["function"] == "always_fails"
    assert letter["error"] == {"type": "ValueError", "message": "queued 41 failed"}
    assert json.loads(letters.body(letter_id)) == [41]
    record = wait_for(lambda: small.find_record(letter_id))
    assert record.trigger == "queue" and record.parent == queues_a_failure.invocations[-1].id
