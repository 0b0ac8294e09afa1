"""What every target exports of a function: its module, data, requirements, and what maps or does not."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from jupyter_faas import contract
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.definition.signature import takes_bytes
from jupyter_faas.export.requirements import imported_modules, requirements_for
from jupyter_faas.export.source import Module, generate
from jupyter_faas.gateway.triggers import TriggerSpec
from jupyter_faas.units import format_size

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
CONTRACT_MODULE = "faas_contract"


@dataclass(frozen=True)
class Exportable:
    """A function to export, with the triggers the notebook set on it."""

    definition: FunctionDefinition
    triggers: tuple[TriggerSpec, ...] = ()
    # The notebook's namespace, where the source of the defs and classes it captured can be read.
    namespace: Mapping[str, Any] | None = None


@dataclass
class Planned:
    """One function's export, before a target writes it; targets add what they mapped and what they could not."""

    definition: FunctionDefinition
    triggers: tuple[TriggerSpec, ...]
    module: Module
    requirements: list[str]
    warnings: list[str] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.definition.name

    def not_mapped(self, what: str, why: str) -> None:
        self.warnings.append(f"{self.name}: {what} is not mapped: {why}")

    def schedules(self) -> list[TriggerSpec]:
        return [spec for spec in self.triggers if spec.kind == "schedule"]

    def check_common(self) -> None:
        """What no target maps: zones, fresh isolation, file triggers; and what a schedule calls it with."""
        limits = self.definition.limits
        if limits.zones and limits.zones > 1:
            self.not_mapped(f"--zones {limits.zones}", "the platform places replicas itself")
        if limits.isolation == "fresh":
            self.not_mapped("--isolation fresh", "each platform reuses its instances between requests")
        for spec in self.triggers:
            if spec.kind == "file":
                self.not_mapped(f"--on-file {spec.directory} (pattern {spec.pattern!r})", "no target watches a folder")
        if self.schedules():
            required = [
                p.name
                for p in self.definition.signature.parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                self.warnings.append(
                    f"{self.name}: its schedule calls it with an empty body (no arguments), where jupyter-faas "
                    f"passes the scheduled time; it requires {', '.join(required)}, so scheduled calls get a 422"
                )


def plan(exportable: Exportable, extra_requirements: tuple[str, ...] = ()) -> Planned:
    definition = exportable.definition
    module = generate(definition, exportable.namespace)
    extra = list(extra_requirements)
    if module.pickled_values:
        extra.append(f"cloudpickle=={metadata.version('cloudpickle')}")
    requirements, warnings = requirements_for(
        definition.name, definition.requirements, imported_modules(module.text), extra
    )
    planned = Planned(definition, exportable.triggers, module, requirements, [*module.warnings, *warnings])
    planned.check_common()
    if takes_bytes(definition):
        planned.mapped.append(("bytes first parameter", "any body that is not JSON is passed to it as bytes"))
    return planned


def target_line(planned: Planned, contract: str) -> str:
    """The adapter's `TARGET`: the function itself, or a warm class's instance made and set up once per process."""
    if planned.definition.warm_class:
        return f"TARGET = {contract}.Warm({planned.name})"
    return f"TARGET = {planned.name}"


def map_kind(planned: Planned, *, streams: bool, setup_where: str) -> None:
    """What the target does with an async function, a generator and a warm class; said where it differs from serve."""
    definition = planned.definition
    if definition.kind in ("async", "async_generator"):
        planned.mapped.append(("async def", "awaited with asyncio in the handler"))
    if definition.streams:
        if streams:
            planned.mapped.append(("generator", "its items as NDJSON lines (application/x-ndjson), as serve does"))
            planned.warnings.append(
                f"{planned.name}: a generator's items are sent when it has finished, not as each is yielded "
                "(the same lines as serve's, a failure part-way still a last error line); "
                "Server-Sent Events (Accept: text/event-stream) are not offered"
            )
        else:
            planned.not_mapped(
                "streaming (a generator)",
                "the platform answers with one body, so the items come as one JSON array once the generator "
                "has finished (serve streams them as NDJSON lines); an error part-way is a 500 with no items",
            )
    if definition.warm_class:
        planned.mapped.append(("class with setup()", setup_where))
        planned.warnings.append(
            f"{planned.name}: setup() has no timeout of its own here (--setup-timeout is not mapped); "
            "it counts against the request's timeout where it runs on first use"
        )


def write_package(directory: Path, planned: Planned, init_text: str = "") -> None:
    """The function's own package: the contract adapter, the generated module and its data files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "__init__.py").write_text(init_text or f'"""{planned.name}, exported from jupyter-faas."""\n')
    (directory / f"{CONTRACT_MODULE}.py").write_text(Path(contract.__file__).read_text("utf-8"))
    (directory / f"{planned.name}.py").write_text(planned.module.text)
    for filename, data in planned.module.data_files().items():
        (directory / filename).write_bytes(data)


def write_requirements(path: Path, planned: Planned, runtime: tuple[str, ...] = ()) -> None:
    lines = list(dict.fromkeys([*planned.requirements, *runtime]))
    path.write_text("".join(f"{line}\n" for line in lines))


def readme(target: str, commands: str, planned_all: list[Planned]) -> str:
    """The export's README: how to deploy it, and for each function its captures, settings and what is not mapped."""
    parts = [
        f"# Exported from jupyter-faas for {target}\n",
        "Each function answers as `jupyter faas serve` does: a JSON object is keyword arguments, an array "
        "positional ones, any other body is bytes for the first parameter; errors are "
        '`{"error": {"type", "message"}}`. The shared adapter is `faas_contract.py` beside each function.\n',
        f"## Deploy\n\n```bash\n{commands.strip()}\n```\n",
    ]
    for planned in planned_all:
        parts.append(f"## {planned.name}\n\n`{planned.definition.describe_signature()}`\n")
        captures = planned.module.captures
        if captures:
            rows = "\n".join(
                f"| `{c.name}` | {c.how} | {format_size(c.size) if c.size else '-'} | {c.detail} |" for c in captures
            )
            table = f"| name | carried as | size | what |\n|---|---|---|---|\n{rows}\n"
            parts.append(f"Captured from the notebook:\n\n{table}")
        else:
            parts.append("It captures nothing from the notebook.\n")
        if planned.requirements:
            parts.append("Requirements: " + ", ".join(f"`{line}`" for line in planned.requirements) + "\n")
        if planned.mapped:
            rows = "\n".join(f"| {ours} | {theirs} |" for ours, theirs in planned.mapped)
            parts.append(f"| jupyter-faas | {target} |\n|---|---|\n{rows}\n")
        if planned.warnings:
            parts.append("**Not mapped, or needs a look:**\n\n" + "\n".join(f"- {w}" for w in planned.warnings) + "\n")
    return "\n".join(parts)
