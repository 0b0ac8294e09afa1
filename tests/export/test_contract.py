"""The standalone adapter, where the shared table cannot reach cheaply: limits, secrets, warm setup, its imports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from jupyter_faas import config as _config
from jupyter_faas import contract


def square(x: int) -> int:
    return x * x


def test_a_body_over_the_limit_is_413_before_it_is_read_as_json() -> None:
    assert _config.http_max_body() == contract.MAX_BODY_BYTES  # serve's default limit
    answer = contract.answer(square, "square", "POST", "application/json", b" " * (contract.MAX_BODY_BYTES + 1))
    assert answer.status == 413 and answer.headers["Content-Type"] == "application/json"
    assert json.loads(answer.body)["error"] == {
        "type": "PayloadTooLarge",
        "message": f"the request body is over the limit of {contract.MAX_BODY_BYTES} bytes",
    }


def test_a_declared_secret_that_is_not_set_is_a_500_naming_it_and_the_function_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = []
    monkeypatch.delenv("TOKEN_FOR_TEST", raising=False)
    answer = contract.answer(lambda: ran.append(1), "keyed", "POST", "", b"", ("TOKEN_FOR_TEST",))
    error = json.loads(answer.body)["error"]
    assert answer.status == 500 and error["type"] == "MissingSecret" and "TOKEN_FOR_TEST" in error["message"]
    assert ran == []
    monkeypatch.setenv("TOKEN_FOR_TEST", "x")
    assert contract.answer(lambda: len(ran), "keyed", "POST", "", b"", ("TOKEN_FOR_TEST",)).body == b"0"


def test_it_imports_nothing_but_the_standard_library() -> None:
    # It is copied into every export, which must run where jupyter-faas is not installed.
    tree = ast.parse(Path(contract.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    standard = {"__future__", "asyncio", "inspect", "json", "math", "os", "sys", "threading", "traceback"}
    assert imported <= standard | {"collections", "typing"}


class Flaky:
    """Its first setup() fails, as a model that is not there yet would; it counts what ran."""

    setups = 0
    teardowns = 0

    def setup(self) -> None:
        Flaky.setups += 1
        if Flaky.setups == 1:
            raise OSError("model not there yet")
        self.base = 100

    def teardown(self) -> None:
        Flaky.teardowns += 1

    def __call__(self, n: int) -> int:
        return self.base + n


def test_a_warm_class_sets_up_once_retries_a_failed_setup_and_tears_down() -> None:
    warm = contract.Warm(Flaky)
    first = contract.answer(warm, "Flaky", "POST", "application/json", b'{"n": 1}')
    # As in a sandbox: a failing setup() fails that call with its own error, and keeps no instance.
    assert first.status == 500 and json.loads(first.body)["error"]["type"] == "OSError"
    assert warm.instance is None
    answers = [contract.answer(warm, "Flaky", "POST", "application/json", f"[{n}]".encode()) for n in range(3)]
    assert [json.loads(a.body) for a in answers] == [100, 101, 102] and Flaky.setups == 2
    # The signature checked at the door is __call__'s, without self.
    wrong = contract.answer(warm, "Flaky", "POST", "application/json", b'{"self": 1}')
    assert wrong.status == 422 and json.loads(wrong.body)["error"]["parameter"] == "n"
    warm.teardown()
    assert Flaky.teardowns == 1 and warm.instance is None
    warm.teardown()  # a second stop, or one before any call, has nothing to tear down
    assert Flaky.teardowns == 1


def halfway(n: int) -> object:
    yield {"n": n}
    yield "two"
    raise ValueError("broke after two items")


def test_a_generator_failing_part_way_sends_its_items_then_an_error_line_or_only_the_error_when_collected() -> None:
    streamed = contract.answer(halfway, "halfway", "POST", "application/json", b"[1]", stream=True)
    lines = [json.loads(line) for line in streamed.body.splitlines()]
    assert streamed.status == 200 and streamed.headers["Content-Type"] == "application/x-ndjson"
    assert lines[:2] == [{"n": 1}, "two"] and lines[2]["error"]["type"] == "ValueError" and len(lines) == 3
    collected = contract.answer(halfway, "halfway", "POST", "application/json", b"[1]")
    assert collected.status == 500 and json.loads(collected.body)["error"]["type"] == "ValueError"


def test_ndjson_is_octet_stream_when_the_first_item_is_bytes_and_stops_at_an_item_json_cannot_carry() -> None:
    raw = contract.ndjson("f", [b"raw", {"n": 1}])
    assert raw.headers["Content-Type"] == "application/octet-stream" and raw.body == b'raw{"n": 1}\n'
    lines = contract.ndjson("f", ["x", float("nan"), "never"]).body.splitlines()
    assert json.loads(lines[0]) == "x" and json.loads(lines[1])["error"]["type"] == "ResultNotJSON" and len(lines) == 2
