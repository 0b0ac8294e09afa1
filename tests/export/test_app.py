"""`jupyter faas export` on the command line: what it says to a careless user, and what it never overwrites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.export.conftest import REQUESTS, SERVED, Request, run_export
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "lambda", "--out", "OUT", "--function", "nope"], "--function nope: functions.ipynb has no such"),
    ],
)
def test_bad_options_fail_naming_the_option(notebook: Path, tmp_path: Path, arguments: list[str], message: str) -> None:
    arguments = [a.replace("OUT", str(tmp_path / "out")) for a in arguments]
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_faas.cli", "export", str(notebook), *arguments],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failing_cell_stops_it_naming_the_cell(tmp_path: Path) -> None:
    broken = write_notebook(tmp_path / "broken.ipynb", ["%%faas square x:int\nx * x", "1 / 0"])
    result = run_export(broken, "knative", tmp_path / "out")
    assert result.returncode == 1 and "cell" in result.stderr and "ZeroDivisionError" in result.stderr
    assert not (tmp_path / "out").exists()
