"""Exporting functions to a target's build context: the folder, the target's files, the README and the warnings."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython import get_ipython

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.errors import ConfigError, ExportError, FaasError, TriggerError
from jupyter_faas.export import aws_lambda, knative, openfaas
from jupyter_faas.export.mapping import dns_name
from jupyter_faas.export.plan import Exportable, Planned, plan, readme
from jupyter_faas.gateway.triggers import TriggerSpec

TARGETS = ("knative", "openfaas", "lambda")
# Written in every export folder: a folder holding it may be replaced by the next export; no other is touched.
MARKER = ".jupyter-faas-export"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the folder, the target, the functions, and every warning (also in its README)."""

    out: Path
    target: str
    functions: tuple[str, ...]
    warnings: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<jupyter-faas export of {', '.join(self.functions)} for {self.target} in {self.out}>"


def triggers_of(name: str) -> tuple[TriggerSpec, ...]:
    """The schedules and file triggers set on `name` where this process deploys; none without a server."""
    try:
        entries = _deploy.triggers()
    except ConfigError:
        raise
    except FaasError:
        return ()
    specs = []
    for entry in entries:
        if entry.get("function") == name:
            try:
                specs.append(TriggerSpec.from_dict(entry))
            except (TriggerError, TypeError):
                continue
    return tuple(specs)


def _check_target(to: Any) -> str:
    if to not in TARGETS:
        raise ExportError(f"export: --to must be one of {', '.join(TARGETS)}, got {to!r}")
    return str(to)


def _prepare_out(out: Path) -> None:
    """An empty (or new) folder, or one a previous export wrote; anything else is refused, never overwritten."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"export: --out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ExportError(
                f"export: --out {out} is not empty and was not written by jupyter faas export; "
                "give a new or empty folder, so nothing of yours is overwritten"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Written by jupyter faas export; the next export to this folder replaces it.\n")


def _check_names(definitions: Sequence[FunctionDefinition], target: str) -> None:
    if target == "lambda":
        return
    seen: dict[str, str] = {}
    for definition in definitions:
        name = dns_name(definition.name)
        if name in seen:
            raise ExportError(
                f"export: {seen[name]} and {definition.name} are both named {name!r} on {target}; rename one"
            )
        seen[name] = definition.name


def export(exportables: Sequence[Exportable], to: Any, out: Any) -> ExportResult:
    """Write `exportables` to the folder `out` as a build context for the target `to`."""
    target = _check_target(to)
    if not exportables:
        raise ExportError("export: there is no function to export")
    _check_names([e.definition for e in exportables], target)
    folder = Path(out).expanduser().resolve()
    planned_all: list[Planned] = [plan(exportable) for exportable in exportables]
    maximum = _config.maximum_workers()
    _prepare_out(folder)
    if target == "knative":
        for planned in planned_all:
            knative.write(folder, planned, maximum)
        commands = knative.COMMANDS
    elif target == "openfaas":
        functions = {dns_name(planned.name): openfaas.write(folder, planned, maximum) for planned in planned_all}
        openfaas.write_stack(folder, functions)
        commands = openfaas.COMMANDS
    else:
        resources: dict[str, Any] = {}
        parameters: dict[str, Any] = {}
        for planned in planned_all:
            aws_lambda.write(folder, planned, resources, parameters)
        aws_lambda.write_template(folder, resources, parameters)
        commands = aws_lambda.COMMANDS
    (folder / "README.md").write_text(readme(target, commands, planned_all))
    warnings = tuple(warning for planned in planned_all for warning in planned.warnings)
    return ExportResult(folder, target, tuple(p.name for p in planned_all), warnings)


def export_definition(definition: FunctionDefinition, to: Any, out: Any) -> ExportResult:
    """`fn.export(to=..., out=...)`: one function of this notebook, each warning also shown as a Python warning."""
    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else None
    result = export([Exportable(definition, triggers_of(definition.name), namespace)], to, out)
    for warning in result.warnings:
        warnings.warn(warning, UserWarning, stacklevel=3)
    return result
