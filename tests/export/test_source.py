"""Generated modules: readable code from the cell, captures as JSON or cloudpickle data, what cannot travel named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import function
from jupyter_faas.export.build import export
from jupyter_faas.export.plan import Exportable
from jupyter_faas.export.source import generate
from tests.helpers import faas_shell, run_ok


def _run_exported(folder: Path, name: str, call: str) -> Any:
    """Import the generated module in a fresh interpreter, from its own folder, and evaluate `call` there."""
    code = f"import sys\nsys.path.insert(0, '.')\nimport json, {name} as m\nprint(json.dumps(m.{call}))"
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _export_one(shell: InteractiveShell, name: str, out: Path) -> tuple[Path, Any]:
    result = export([Exportable(shell.user_ns[name]._definition, (), shell.user_ns)], "lambda", out)
    return out / name / "function", result


def test_a_form_one_cell_becomes_a_def_with_its_parameters_and_returns_its_last_expression(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(shell, "%%faas greet name:str greeting='hi there' times=2\n# say it\nf'{greeting} {name}!' * times")
        folder, _ = _export_one(shell, "greet", tmp_path / "out")
    text = (folder / "greet.py").read_text()
    assert "def greet(name: str, greeting='hi there', times=2):" in text
    assert "    # say it\n    return f'{greeting} {name}!' * times" in text
    assert _run_exported(folder, "greet", "greet('ann', times=1)") == "hi there ann!"


def test_multi_line_strings_keep_their_text(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(shell, '%%faas poem\ntext = """one\ntwo\n  three"""\ntext.splitlines()')
        folder, _ = _export_one(shell, "poem", tmp_path / "out")
    assert _run_exported(folder, "poem", "poem()") == ["one", "two", "  three"]


def test_a_form_two_cell_keeps_its_imports_and_helpers_and_a_rename(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(
            shell,
            "%%faas digest\nimport hashlib\nSALT = b'x'\ndef _mix(data):\n    return SALT + data\n"
            "def digest(text: str):\n    return hashlib.sha256(_mix(text.encode())).hexdigest()",
        )
        run_ok(shell, "%%faas shout\ndef loud(text: str):\n    return text.upper()")
        folder, _ = _export_one(shell, "digest", tmp_path / "out")
        renamed, _ = _export_one(shell, "shout", tmp_path / "renamed")
        expected = run_ok(shell, "digest.local('a')")
    text = (folder / "digest.py").read_text()
    assert "import hashlib" in text and "def _mix(data):" in text and "SALT = b'x'" in text
    assert _run_exported(folder, "digest", "digest('a')") == expected
    assert "shout = loud" in (renamed / "shout.py").read_text()
    assert _run_exported(renamed, "shout", "shout('a')") == "A"


def test_captures_go_as_json_when_they_fit_else_pickled_and_notebook_helpers_as_source(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(
            shell,
            "import math as m\nfrom statistics import mean\nRATES = {'a': [1, 2.5, None]}\nPAIR = (3, 4)\n"
            "def scale(v):\n    return v * PAIR[0]\n",
        )
        run_ok(shell, "%%faas compute x:float\n[m.floor(scale(x)), mean(RATES['a'][:2]), PAIR]")
        expected = run_ok(shell, "compute.local(2.5)")
        folder, result = _export_one(shell, "compute", tmp_path / "out")
    text = (folder / "compute.py").read_text()
    assert "import math as m" in text and "from statistics import mean" in text and "def scale(v):" in text
    assert json.loads((folder / "compute.captures.json").read_text()) == {"RATES": {"a": [1, 2.5, None]}}
    assert (folder / "compute.captures.pickle").is_file()  # a tuple is not JSON: it would come back a list
    assert _run_exported(folder, "compute", "compute(2.5)") == json.loads(json.dumps(expected))
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| `RATES` | json |" in readme and "| `PAIR` | pickle |" in readme
    requirements = (tmp_path / "out/compute/requirements.txt").read_text().split()
    assert any(line.startswith("cloudpickle==") for line in requirements)
    assert result.warnings == ()


def test_what_cannot_travel_is_named_in_a_warning_and_in_the_readme(tmp_path: Path) -> None:
    (tmp_path / "mylocal.py").write_text("def twice(v):\n    return 2 * v\n")
    with faas_shell() as shell:
        run_ok(shell, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport mylocal")
        try:
            run_ok(shell, "%%faas inner x:int\nx + 1")
            run_ok(shell, "%%faas outer x:int\nmylocal.twice(inner(x))")
            _, result = _export_one(shell, "outer", tmp_path / "out")
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("mylocal", None)
    joined = "\n".join(result.warnings)
    assert "'mylocal'" in joined and "'inner'" in joined
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "mylocal" in readme and "not exported" in readme


def test_a_decorated_def_exports_without_its_decorator(tmp_path: Path) -> None:
    limit = 5

    @function(timeout="3s")
    def clamp(value: int) -> int:
        return min(value, limit)

    module = generate(clamp._definition)
    assert "@function" not in module.text and "def clamp(value: int) -> int:" in module.text
    # `limit` is a closure variable: the module has no closure, so it becomes one of its globals.
    assert module.json_values == {"limit": 5} and module.warnings == []
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "clamp.py").write_text(module.text)
    for filename, data in module.data_files().items():
        (folder / filename).write_bytes(data)
    assert _run_exported(folder, "clamp", "clamp(9)") == 5


def test_a_default_code_cannot_spell_is_carried_as_data(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(shell, "import datetime\nSTART = datetime.date(2024, 1, 2)")
        run_ok(shell, "%%faas pick day=START\nday.isoformat()")
        folder, _ = _export_one(shell, "pick", tmp_path / "out")
    assert "def pick(day=_default_day):" in (folder / "pick.py").read_text()
    assert _run_exported(folder, "pick", "pick()") == "2024-01-02"


@pytest.mark.parametrize("target", ["knative", "openfaas", "lambda"])
def test_the_notebook_api_exports_and_refuses_a_folder_it_did_not_write(target: str, tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(shell, "%%faas square x:int\nx * x")
        result = run_ok(shell, f"square.export(to={target!r}, out={str(tmp_path / 'out')!r})")
        assert result.functions == ("square",) and result.target == target
        # Exporting again replaces its own earlier export.
        run_ok(shell, f"square.export(to={target!r}, out={str(tmp_path / 'out')!r})")
        mine = tmp_path / "mine"
        mine.mkdir()
        (mine / "notes.txt").write_text("keep me")
        refused = shell.run_cell(f"square.export(to={target!r}, out={str(mine)!r})")
        assert "not empty" in str(refused.error_in_exec)
        assert (mine / "notes.txt").read_text() == "keep me"
        bad = shell.run_cell(f"square.export(to='heroku', out={str(tmp_path / 'x')!r})")
        assert "--to must be one of knative, openfaas, lambda" in str(bad.error_in_exec)


def test_requirements_hold_the_declared_ones_then_each_installed_import_pinned(tmp_path: Path) -> None:
    with faas_shell() as shell:
        run_ok(shell, '%%faas parse text --requirements "PyYAML>=6"\nimport yaml, croniter\nyaml.safe_load(text)')
        _, result = _export_one(shell, "parse", tmp_path / "out")
    lines = (tmp_path / "out" / "parse" / "requirements.txt").read_text().split()
    assert lines[0] == "PyYAML>=6" and len([line for line in lines if line.lower().startswith("pyyaml")]) == 1
    assert any(line.startswith("croniter==") for line in lines), lines
    assert result.warnings == ()
