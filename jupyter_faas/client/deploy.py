"""Where `deploy()` goes: this process's endpoints, or those of the Jupyter server that started this kernel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.sharing import REGISTRY_ENV, TRIGGERS_ENV, URL_ENV
from jupyter_faas.errors import ConfigError, FaasError
from jupyter_faas.gateway.triggers import TriggerSpec, TriggerStore
from jupyter_faas.record.registry import Registry

_here: tuple[Registry, str, TriggerStore | None] | None = None


def serve_here(registry: Registry | None, url: str = "", triggers: TriggerStore | None = None) -> None:
    """Called by `jupyter faas serve` and the server extension: deploys in this process go to `registry`."""
    global _here
    _here = None if registry is None else (registry, url, triggers)


def serving_here() -> tuple[Registry, str, TriggerStore | None] | None:
    """What `serve_here` set last (None if nothing): to put back after borrowing it."""
    return _here


def _target() -> tuple[Registry, str, TriggerStore | None]:
    if _here is not None:
        return _here
    directory = os.environ.get(REGISTRY_ENV)
    if directory:
        triggers = os.environ.get(TRIGGERS_ENV)
        store = TriggerStore(Path(triggers)) if triggers else None
        return Registry(Path(directory)), os.environ.get(URL_ENV, ""), store
    raise FaasError(
        "deploying and triggers need a server to run them, and this process has none. Open the notebook in "
        "JupyterLab or Notebook 7 with jupyter-faas installed, or run: jupyter faas serve NOTEBOOK.ipynb"
    )


def deploy(definition: FunctionDefinition) -> str:
    """Deploy `definition` under its name; the endpoint's URL."""
    registry, url, _ = _target()
    registry.deploy(definition)
    return f"{url}faas/functions/{definition.name}"


def undeploy(name: str) -> bool:
    registry, _, _ = _target()
    return registry.undeploy(name)


def _store() -> TriggerStore:
    _, _, store = _target()
    if store is None:
        raise FaasError("this Jupyter server's jupyter-faas has no trigger store; restart the server")
    return store


def add_trigger(definition: FunctionDefinition, spec: TriggerSpec) -> None:
    """Deploy this version (triggers fire the deployed one), then set the trigger."""
    deploy(definition)
    _store().add(spec)


def remove_trigger(name: str, kind: str) -> bool:
    return _store().remove(name, kind)


def triggers() -> list[dict[str, Any]]:
    """Every trigger set on this platform, with how many files each file trigger handled."""
    store = _store()
    listed = []
    for spec in store.specs():
        entry = spec.to_dict()
        if spec.kind == "file":
            entry.update(store.progress(spec).counts())
        listed.append(entry)
    return listed


def function_triggers(name: str) -> list[str]:
    """What fires `name` besides calls: "every 30 s", "files matching '*.png' in /data"; [] without a server."""
    try:
        store = _store()
    except ConfigError:
        raise  # a bad setting must be seen, not read as "no server"
    except FaasError:
        return []
    return [spec.describe() for spec in store.specs() if spec.function == name]


def triggers_stamp() -> int | None:
    """Changes whenever a trigger is set or removed: cheap to poll."""
    try:
        return _store().directory.stat().st_mtime_ns
    except ConfigError:
        raise
    except (FaasError, OSError):
        return None
