"""The standalone adapter, where the shared table cannot reach cheaply: the body limit, secrets, its imports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from jupyter_faas import config as _config
from jupyter_faas.export import contract


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
    assert imported <= {"__future__", "inspect", "json", "math", "os", "sys", "traceback", "collections", "typing"}
