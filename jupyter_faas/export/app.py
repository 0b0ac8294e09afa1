"""`jupyter faas export NOTEBOOK --to TARGET --out DIR`: run a notebook as serve does, then export its functions."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from IPython.core.interactiveshell import InteractiveShell
from jupyter_core.application import JupyterApp
from traitlets import List, Unicode

from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client.function import FaasFunction
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import ExportError, FaasError
from jupyter_faas.export.build import TARGETS, ExportResult, export, triggers_of
from jupyter_faas.export.plan import Exportable
from jupyter_faas.gateway.notebook import NotebookError, run_notebook
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry


def collect(path: Path, names: Sequence[str] = ()) -> list[Exportable]:
    """Run the notebook as `serve` does (its folder, cells tagged faas-skip left out), and take its %%faas functions
    with the triggers its cells set; only `names`, in that order, when given."""
    previous = Path.cwd()
    # Only a platform the notebook's own cells started is stopped after: one this process had before is kept.
    was_running = _platform.current(start=False).started
    before = _deploy.serving_here()
    with tempfile.TemporaryDirectory(prefix="jupyter-faas-export-") as state:
        # Deploys and triggers the notebook asks for are kept here, to be read as settings, not run.
        _deploy.serve_here(Registry(None), "", TriggerStore(Path(state) / "triggers"))
        os.chdir(path.parent)
        try:
            # Only the functions this run made: a shell that ran other cells before (in a test, or an export called
            # from a notebook) keeps its own. Not a reset: that would replace this process's __main__ module.
            existing = {name: id(value) for name, value in InteractiveShell.instance().user_ns.items()}
            namespace = run_notebook(path)
            functions = {
                value.name: value
                for name, value in namespace.items()
                if isinstance(value, FaasFunction) and existing.get(name) != id(value)
            }
            if not functions:
                raise ExportError(f"export: {path.name} defines no %%faas function")
            unknown = [name for name in names if name not in functions]
            if unknown:
                raise ExportError(
                    f"export: --function {', '.join(unknown)}: {path.name} has no such function; "
                    f"it has {', '.join(sorted(functions))}"
                )
            chosen = list(dict.fromkeys(names)) or list(functions)
            return [Exportable(functions[name]._definition, triggers_of(name), namespace) for name in chosen]
        finally:
            os.chdir(previous)
            _deploy.serve_here(*before) if before is not None else _deploy.serve_here(None)
            platform = _platform.current(start=False)
            if platform.started and not was_running:
                platform.shutdown()


def export_notebook(path: Any, to: Any, out: Any, names: Sequence[str] = ()) -> ExportResult:
    """Export the %%faas functions of the notebook at `path` (or those named) to `out`, for the target `to`."""
    notebook = Path(path).expanduser().resolve()
    if to not in TARGETS:
        raise ExportError(f"export: --to must be one of {', '.join(TARGETS)}, got {to!r}")
    if not notebook.is_file():
        raise ExportError(f"export: no notebook at {notebook}")
    return export(collect(notebook, names), to, Path(out).expanduser().resolve())


class ExportApp(JupyterApp):
    """Export a notebook's %%faas functions as build contexts for Knative, OpenFaaS or AWS Lambda."""

    name = "jupyter-faas-export"
    description = (
        "Export a notebook's %%faas functions as a build context for Knative (func), OpenFaaS (faas-cli) or "
        "AWS Lambda (SAM): readable code, captured values as data, requirements.txt, a Dockerfile, the settings."
    )
    examples = "jupyter faas export functions.ipynb --to knative --out build/knative --function square"

    to = Unicode("", config=True, help=f"The target: {', '.join(TARGETS)}.")
    out = Unicode("", config=True, help="The folder to write: new, empty, or written by an earlier export.")
    function = List(Unicode(), config=True, help="A function to export (repeatable); all of them by default.")

    aliases = {"to": "ExportApp.to", "out": "ExportApp.out", "function": "ExportApp.function"}

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.exit_with("jupyter faas export: give exactly one notebook, e.g. " + self.examples, 2)
        if not self.to or not self.out:
            self.exit_with(f"jupyter faas export: give --to ({'|'.join(TARGETS)}) and --out DIR", 2)
        try:
            result = export_notebook(self.extra_args[0], self.to, self.out, self.function)
        except NotebookError as e:
            self.exit_with(f"jupyter faas export: {Path(self.extra_args[0]).name}: {e}", 1)
            return
        except FaasError as e:
            self.exit_with(f"jupyter faas export: {e}", 2)
            return
        print(
            f"jupyter faas export: {len(result.functions)} function(s) for {result.target} in {result.out}: "
            f"{', '.join(result.functions)} (see its README.md)",
            flush=True,
        )
        for warning in result.warnings:
            print(f"  warning: {warning}", file=sys.stderr, flush=True)

    def exit_with(self, message: str, code: int) -> None:
        print(message, file=sys.stderr, flush=True)
        self.exit(code)
