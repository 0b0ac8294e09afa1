"""`jupyter faas export` on the command line: what it says to a careless user, and what it never overwrites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_faas.client import deploy as _deploy
from jupyter_faas.errors import ExportError
from jupyter_faas.export.app import export_notebook
from jupyter_faas.gateway.notebook import NotebookError
from jupyter_faas.record.registry import Registry
from tests.export.conftest import REQUESTS, SERVED, Prepared, Request
from tests.helpers import write_notebook


def test_the_serve_table_covers_every_status_the_contract_has(serve_answers: dict[Request, Any]) -> None:
    # Guards the comparisons of the target tests: serve must have answered each kind of row, not refused them all.
    assert {status for status, _, _ in serve_answers.values()} == {200, 400, 405, 422, 500}
    assert len(serve_answers) == len(REQUESTS)


def test_only_the_functions_asked_for_are_exported(exports: dict[str, tuple[Path, str]]) -> None:
    # The session's knative export named its functions with --function; the others exported them all.
    knative, printed = exports["knative"]
    assert sorted(p.name for p in knative.iterdir() if p.is_dir()) == sorted([*SERVED, "watched"])
    assert f"{len(SERVED) + 1} function(s) for knative" in printed
    lambda_out, _ = exports["lambda"]
    assert (lambda_out / "unused").is_dir()


def test_a_bad_target_fails_naming_the_option_before_anything_runs(prepared: Prepared) -> None:
    result = prepared.bad_target
    assert result.returncode == 2, result.stderr
    assert "--to must be one of knative, openfaas, lambda, got 'heroku'" in result.stderr
    assert "is a serverless function" not in result.stdout  # refused before the notebook ran


def test_an_unknown_function_or_a_failing_cell_stops_it_and_nothing_is_written(notebook: Path, tmp_path: Path) -> None:
    # Where this process deploys (a server extension's registry, say) is borrowed while the notebook runs, then
    # given back as it was.
    mine = (Registry(None), "http://mine/", None)
    _deploy.serve_here(*mine)
    try:
        unknown = r"--function nope: functions.ipynb has no such function; it has Warm, add, "
        with pytest.raises(ExportError, match=unknown):
            export_notebook(notebook, "lambda", tmp_path / "out", ["square", "nope"])
        assert _deploy.serving_here() == mine
    finally:
        _deploy.serve_here(None)
    broken = write_notebook(tmp_path / "broken.ipynb", ["%%faas square x:int\nx * x", "1 / 0"])
    with pytest.raises(NotebookError, match=r"cell 3 \('1 / 0'\) failed: ZeroDivisionError"):
        export_notebook(broken, "knative", tmp_path / "out")
    assert not (tmp_path / "out").exists()
