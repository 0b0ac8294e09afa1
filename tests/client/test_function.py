"""The function object on a real cluster: calls, futures, maps, local runs, errors and statelessness."""

from __future__ import annotations

import os
import traceback
from concurrent.futures import Future
from pathlib import Path

import pytest

import jupyter_faas
from jupyter_faas import FaasFunction, RemoteError, function
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.errors import LimitError
from jupyter_faas.gateway.keys import KeyStore, keys_path
from jupyter_faas.record.registry import Registry


@function(timeout="20s")
def square(x: int) -> int:
    return x * x


counter = 0


@function
def bump() -> int:
    global counter
    counter += 1
    return counter


class Unrebuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


@function
def raise_unrebuildable() -> None:
    raise Unrebuildable(1, 2)


def test_call_blocks_and_returns_the_result(platform: object) -> None:
    assert isinstance(square, FaasFunction)
    assert square(7) == 49


def test_submit_returns_a_concurrent_future(platform: object) -> None:
    future = square.submit(6)
    assert isinstance(future, Future)
    assert future.result(timeout=60) == 36


def test_map_of_a_thousand_items_returns_in_order(platform: object) -> None:
    assert square.map(range(1000)) == [x * x for x in range(1000)]


def test_map_takes_several_iterables(platform: object) -> None:
    @function
    def add(a: int, b: int) -> int:
        return a + b

    assert add.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]


def test_map_with_return_exceptions_gives_errors_in_place(platform: object) -> None:
    @function
    def invert(x: float) -> float:
        return 1 / x

    results = invert.map([1, 0, 2], return_exceptions=True)
    assert results[0] == 1.0 and results[2] == 0.5
    assert isinstance(results[1], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        invert.map([1, 0, 2])


def test_the_stateless_counter_returns_one_on_every_call_on_every_worker(platform: object) -> None:
    futures = [bump.submit() for _ in range(40)]
    results = [bump() for _ in range(5)] + [f.result() for f in futures]
    assert results == [1] * 45
    assert counter == 0
    assert len({r.worker for r in bump.invocations}) >= 1


def test_local_runs_here_with_the_same_stateless_semantics() -> None:
    assert square.local(5) == 25
    assert [bump.local() for _ in range(3)] == [1, 1, 1]


def test_arguments_that_do_not_fit_fail_before_anything_is_sent(platform: object) -> None:
    before = square.stats()["invocations"]
    with pytest.raises(TypeError, match=r"^square\(\): missing a required argument: 'x'"):
        square()
    with pytest.raises(TypeError, match=r"square\(\): an argument cannot be sent to a worker"):
        square(__import__("threading").Lock())
    assert square.stats()["invocations"] == before


def test_a_remote_exception_is_raised_again_with_its_type_message_and_traceback(platform: object) -> None:
    @function
    def fails(x: int) -> None:
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="^bad 3$") as caught:
        fails(3)
    text = "".join(traceback.format_exception(caught.value))
    assert 'raise ValueError(f"bad {x}")' in text
    rendered = "\n".join(caught.value._render_traceback_())  # type: ignore[attr-defined]
    assert rendered.startswith("fails failed on worker tcp://127.0.0.1:")
    assert 'raise ValueError(f"bad {x}")' in rendered
    assert "jupyter_faas" not in rendered


def test_an_exception_that_cannot_be_rebuilt_becomes_a_remote_error(platform: object) -> None:
    with pytest.raises(RemoteError, match="Unrebuildable: 1-2") as caught:
        raise_unrebuildable()
    assert caught.value.type_name == "Unrebuildable"


def test_stats_and_records(platform: object) -> None:
    @function
    def echo(x: object) -> object:
        return x

    assert echo.map(range(20)) == list(range(20))
    with pytest.raises(ZeroDivisionError):
        function(name="divide")(lambda: 1 / 0)()  # a named lambda is a def too
    with pytest.raises(ValueError, match="a lambda needs a name"):
        function(lambda: 1)
    stats = echo.stats()
    assert stats["invocations"] == 20 and stats["errors"] == 0
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    records = echo.invocations
    assert len(records) == 20
    record = records[-1]
    assert record.function == "echo" and record.version == echo.version and record.status == "ok"
    assert record.submitted <= record.started <= record.finished
    assert record.queued_ms >= 0 and record.duration_ms >= 0 and record.latency_ms > 0
    assert record.worker.startswith("tcp://127.0.0.1:") and record.error is None and record.attempts == 1
    assert set(record.to_dict()) >= {
        "id", "function", "version", "submitted", "started", "finished", "queued_ms",
        "cold_start", "duration_ms", "worker", "status", "error",
    }  # fmt: skip


def test_a_bad_decorator_argument_names_the_option() -> None:
    with pytest.raises(ValueError, match="^timeout: expected a duration"):
        function(timeout="forever")
    with pytest.raises(ValueError, match="^memory: expected a size"):
        function(memory="lots")
    with pytest.raises(ValueError, match="^retries: expected a whole number"):
        function(retries="many")


def test_repr_names_signature_version_and_limits() -> None:
    def cube(x: int) -> int:
        return x**3

    wrapped = function(timeout="5s", memory="128MB")(cube)
    assert repr(wrapped) == (
        f"<faas function cube(x: 'int') -> 'int' version {wrapped.version[:8]}: "
        "timeout 5s, memory 128MB, retries 0, concurrency unlimited>"
    )


def test_files_passed_by_path_are_where_state_belongs(platform: object, tmp_path: Path) -> None:
    @function
    def append(path: str, line: str) -> int:
        with open(path, "a") as f:
            f.write(line + "\n")
        return os.getpid()

    target = tmp_path / "log.txt"
    pids = append.map([str(target)] * 10, [str(i) for i in range(10)])
    assert sorted(target.read_text().split()) == sorted(str(i) for i in range(10))
    assert os.getpid() not in pids


def test_platform_is_public_and_reports_the_cluster(platform: object) -> None:
    p = jupyter_faas.platform()
    assert p is platform
    assert p.scheduler_address.startswith("tcp://127.0.0.1:")
    assert p.dashboard_link and p.dashboard_link.startswith("http://127.0.0.1:")
    square(1)
    assert 1 <= p.workers <= p.maximum
    assert p.scale_events and all(isinstance(t, float) and isinstance(n, int) for t, n in p.scale_events)
    assert square(2) == 4


def test_a_misspelt_option_of_the_decorator_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments: tiemout"):
        function(tiemout="5s")


def test_deploy_keeps_its_rate_and_quota_and_keys_reach_only_this_function(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    store = KeyStore(keys_path(tmp_path))
    _deploy.serve_here(registry, "http://127.0.0.1:1/", None, store)
    try:
        with pytest.raises(LimitError, match="rate: expected calls per unit"):
            square.deploy(rate="fast")
        assert registry.get("square") is None  # a bad rate deploys nothing
        assert square.deploy(rate="5/s", quota="100/day") == "http://127.0.0.1:1/faas/functions/square"
        square.deploy()  # a later deploy keeps them
        deployed = registry.get("square")
        assert deployed is not None and (deployed.rate, deployed.quota) == ("5/s", "100/day")
        key = square.create_key(note="for a test")
        assert key.startswith("fk_") and key.functions == ("square",)
        found = store.find(key)
        assert found is not None and found.id == key.id and found.note == "for a test"
        assert square.revoke_key(key.id) is True and store.find(key) is None
        assert square.revoke_key(key.id) is False
    finally:
        _deploy.serve_here(None)
