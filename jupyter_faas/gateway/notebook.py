"""A served notebook: running its code cells, and switching the endpoints to what a new run of it deploys."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nbformat

from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client.function import FaasFunction
from jupyter_faas.gateway.keys import KeyStore, keys_path
from jupyter_faas.gateway.triggers import TriggerSpec, TriggerStore
from jupyter_faas.record.registry import Registry

SKIP_TAG = "faas-skip"
SKIP_LINE = "# faas: skip"


class NotebookError(Exception):
    """A cell of the served notebook failed; the message names the cell."""


def code_cells(notebook: Any) -> list[tuple[int, str]]:
    """(cell number from 1, source) of the code cells to run: not tagged faas-skip, not starting `# faas: skip`."""
    cells = []
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code":
            continue
        source = cell.source
        first_line = source.lstrip().split("\n", 1)[0].strip().lower()
        if SKIP_TAG in cell.get("metadata", {}).get("tags", []) or first_line.replace(" ", "") == "#faas:skip":
            continue
        cells.append((number, source))
    return cells


def read_cells(path: Path) -> list[tuple[int, str]]:
    """The code cells `run_notebook` would run, read from the file now."""
    try:
        notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # nbformat has no annotations
    except (OSError, ValueError, nbformat.reader.NotJSONError) as e:
        raise NotebookError(f"cannot read {path}: {e}") from None
    return code_cells(notebook)


def run_notebook(path: Path, fresh: bool = False) -> dict[str, Any]:
    """Run the notebook's code cells once, top to bottom; the namespace they ran in.

    `fresh`: a run after an earlier one in this process starts from an empty namespace, as a restarted kernel does.
    """
    from IPython.core.interactiveshell import InteractiveShell

    cells = read_cells(path)
    shell = InteractiveShell.instance()
    if fresh:
        shell.reset(new_session=False)  # type: ignore[no-untyped-call]  # IPython has no annotations
    extensions = shell.extension_manager
    if extensions is None or "jupyter_faas" not in extensions.loaded:
        shell.run_line_magic("load_ext", "jupyter_faas")
    for number, source in cells:
        result = shell.run_cell(source, store_history=False)  # type: ignore[no-untyped-call]
        if not result.success:
            error = result.error_in_exec or result.error_before_exec
            first = source.strip().split("\n", 1)[0][:60]
            raise NotebookError(f"cell {number} ({first!r}) failed: {type(error).__name__}: {error}")
    return cast(dict[str, Any], shell.user_ns)  # typed Any in IPython


def run_into(
    path: Path, registry: Registry, url: str, triggers: TriggerStore, fresh: bool = False, keys: KeyStore | None = None
) -> None:
    """Run the notebook with its deploys and triggers going to `registry` and `triggers`, and keys made meanwhile
    to `keys`; every %%faas function it defines is deployed there too. `_deploy`'s target is left pointing at them."""
    _deploy.serve_here(registry, url, triggers, keys)
    namespace = run_notebook(path, fresh)
    for value in list(namespace.values()):
        if isinstance(value, FaasFunction):
            value.deploy()  # with the --rate and --quota of its magic line


@dataclass
class Switched:
    """What a new run of the notebook changed: functions by name, with their short versions."""

    deployed: dict[str, str] = field(default_factory=dict)
    updated: dict[str, tuple[str, str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    triggers_set: list[str] = field(default_factory=list)
    triggers_removed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        said = [f"  new: {name} (version {version})" for name, version in sorted(self.deployed.items())]
        said += [f"  updated: {name} (version {old} -> {new})" for name, (old, new) in sorted(self.updated.items())]
        said += [f"  removed: {name}" for name in self.removed]
        said += [f"  trigger set: {trigger}" for trigger in self.triggers_set]
        said += [f"  trigger removed: {trigger}" for trigger in self.triggers_removed]
        return said or ["  nothing changed"]


def _same_trigger(first: TriggerSpec, second: TriggerSpec) -> bool:
    return dataclasses.replace(first, created=0.0) == dataclasses.replace(second, created=0.0)


def switch(live: Registry, live_triggers: TriggerStore, staged: Registry, staged_triggers: TriggerStore) -> Switched:
    """Make the live endpoints what the staged run deployed. Each function switches at once (requests under way
    finish on the version they started on); its triggers switch after it, so they fire the new version."""
    switched = Switched()
    before = {deployment.name: deployment for deployment in live.deployments()}
    after = {deployment.name: deployment for deployment in staged.deployments()}
    for name, deployment in after.items():
        old = before.get(name)
        new_version = deployment.definition.short_version
        if old is None:
            switched.deployed[name] = new_version
        elif old.definition.version != deployment.definition.version:
            switched.updated[name] = (old.definition.short_version, new_version)
        else:
            continue
        live.deploy(deployment.definition)
    live_specs = {spec.id: spec for spec in live_triggers.specs()}
    staged_specs = {spec.id: spec for spec in staged_triggers.specs()}
    for key, spec in staged_specs.items():
        known = live_specs.get(key)
        if known is None or not _same_trigger(known, spec):
            live_triggers.add(spec)
            switched.triggers_set.append(f"{spec.function}: {spec.describe()}")
    for key, spec in live_specs.items():
        if key not in staged_specs:
            live_triggers.remove(spec.function, spec.kind)
            switched.triggers_removed.append(f"{spec.function}: {spec.describe()}")
    for name in before:
        if name not in after:
            live.undeploy(name)
            switched.removed.append(name)
    return switched


class ServedNotebook:
    """The notebook `serve --watch` serves: `reload()` runs it again into a staging registry and trigger folder,
    and switches the live ones to what it deployed only if every cell ran."""

    def __init__(
        self, path: Path, url: str, registry: Registry, triggers: TriggerStore, state: Path,
        cells: list[tuple[int, str]], on_switch: Callable[[], None],
    ) -> None:  # fmt: skip
        self.path, self.url, self.registry, self.triggers = path, url, registry, triggers
        self.state, self.cells, self.on_switch = state, cells, on_switch
        self.keys = KeyStore(keys_path(state))

    def reload(self) -> None:
        """Run the notebook again if its code cells changed; what happened is printed, errors to stderr."""
        try:
            cells = read_cells(self.path)
        except NotebookError as e:
            print(f"jupyter faas serve: {e}; the previous versions keep serving", file=sys.stderr, flush=True)
            return
        if cells == self.cells:
            return  # saved with other outputs or metadata: nothing that runs changed
        self.cells = cells
        print(f"jupyter faas serve: {self.path.name} changed; running it again", flush=True)
        staging = self.state / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staged, staged_triggers = Registry(None), TriggerStore(staging / "triggers")
        try:
            run_into(self.path, staged, self.url, staged_triggers, fresh=True, keys=self.keys)
            switched = switch(self.registry, self.triggers, staged, staged_triggers)
        except Exception as e:  # NotebookError, or a cell's deploy that failed: the old versions keep serving
            print(
                f"jupyter faas serve: {self.path.name}: {e}; the previous versions keep serving",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            return
        finally:
            _deploy.serve_here(self.registry, self.url, self.triggers, self.keys)
            shutil.rmtree(staging, ignore_errors=True)
        self.on_switch()
        print(f"jupyter faas serve: {self.path.name} ran again; now serving:", flush=True)
        for line in switched.lines():
            print(line, flush=True)


def watch_file(path: Path, changed: threading.Event, stop: threading.Event) -> None:
    """Set `changed` whenever `path` is written or replaced, until `stop` is set."""
    import watchfiles

    # The folder is watched, not the file: Jupyter and editors save by renaming a new file over the old one.
    for _ in watchfiles.watch(
        path.parent, watch_filter=lambda _change, name: Path(name) == path, stop_event=stop, recursive=False,
        debounce=200, raise_interrupt=False,
    ):  # fmt: skip
        changed.set()
