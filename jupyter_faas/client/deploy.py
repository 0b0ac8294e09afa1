"""Where `deploy()` goes: this process's endpoints, or those of the Jupyter server that started this kernel."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.sharing import REGISTRY_ENV, TRIGGERS_ENV, URL_ENV
from jupyter_faas.errors import ConfigError, FaasError
from jupyter_faas.gateway.keys import KeyStore, keys_path
from jupyter_faas.gateway.ratelimit import check as check_limits
from jupyter_faas.gateway.triggers import TriggerSpec, TriggerStore
from jupyter_faas.record.registry import Registry

_here: tuple[Registry, str, TriggerStore | None] | None = None
# Where deploys go when neither this process nor a Jupyter server owns the endpoints: a kernel's own gateway,
# started on first need (`start=True`); None from it while not started. Set by jupyter_faas.gateway.inkernel.
Fallback = Callable[[bool], "tuple[Registry, str, TriggerStore | None] | None"]
_fallback: Fallback | None = None
# The function keys of that gateway, once started (None before): its own, not the state dir's.
_fallback_keys: Callable[[], KeyStore | None] | None = None


def use_fallback(fallback: Fallback | None, keys: Callable[[], KeyStore | None] | None = None) -> None:
    """Called by the in-kernel gateway's module: deploys with no server go to the gateway it starts, and function
    keys made here to the store `keys` gives."""
    global _fallback, _fallback_keys
    _fallback = fallback
    _fallback_keys = keys


_keys_here: KeyStore | None = None


def serve_here(
    registry: Registry | None, url: str = "", triggers: TriggerStore | None = None, keys: KeyStore | None = None
) -> None:
    """Called by `jupyter faas serve` and the server extension: deploys in this process go to `registry`, and
    function keys made here to `keys` (by default, those of the state dir)."""
    global _here, _keys_here
    _here = None if registry is None else (registry, url, triggers)
    _keys_here = keys


def serving_here() -> tuple[Registry, str, TriggerStore | None] | None:
    """What `serve_here` set last (None if nothing): to put back after borrowing it."""
    return _here


def served_elsewhere() -> bool:
    """Whether another process (this kernel's Jupyter server) owns the endpoints and triggers deploys go to."""
    return _here is None and bool(os.environ.get(REGISTRY_ENV))


def _target(start: bool = True) -> tuple[Registry, str, TriggerStore | None]:
    """Where deploys and triggers go; `start=False` for looks that must not start a kernel's own gateway."""
    if _here is not None:
        return _here
    directory = os.environ.get(REGISTRY_ENV)
    if directory:
        triggers = os.environ.get(TRIGGERS_ENV)
        store = TriggerStore(Path(triggers)) if triggers else None
        return Registry(Path(directory)), os.environ.get(URL_ENV, ""), store
    own = _fallback(start) if _fallback is not None else None
    if own is not None:
        return own
    raise FaasError(
        "deploying and triggers need a server to run them, and this process has none. Run %load_ext jupyter_faas "
        "first (a kernel then serves its own functions), open the notebook in JupyterLab or Notebook 7 with "
        "jupyter-faas installed, or run: jupyter faas serve NOTEBOOK.ipynb"
    )


def deploy(definition: FunctionDefinition, rate: str | None = None, quota: str | None = None) -> str:
    """Deploy `definition` under its name, with its rate and daily quota per caller; the endpoint's URL."""
    check_limits(rate, quota)
    registry, url, _ = _target()
    registry.deploy(definition, rate=rate, quota=quota)
    return f"{url}faas/functions/{definition.name}"


def key_store() -> KeyStore:
    """The function keys of the server this process deploys to (the state dir's, shared with that server)."""
    _target()  # no server, no keys: the same error as deploying
    if _keys_here is not None:
        return _keys_here
    if _here is None and not os.environ.get(REGISTRY_ENV) and _fallback_keys is not None:
        own = _fallback_keys()  # this kernel's own gateway, which _target() has started
        if own is not None:
            return own
    return KeyStore(keys_path(_config.state_dir()))


def undeploy(name: str) -> bool:
    if _fallback is not None and _here is None and not os.environ.get(REGISTRY_ENV) and _fallback(False) is None:
        return False  # a kernel whose own gateway never started has deployed nothing
    registry, _, _ = _target()
    return registry.undeploy(name)


def _store(start: bool = True) -> TriggerStore:
    _, _, store = _target(start)
    if store is None:
        raise FaasError("this Jupyter server's jupyter-faas has no trigger store; restart the server")
    return store


def add_trigger(definition: FunctionDefinition, spec: TriggerSpec) -> None:
    """Deploy this version (triggers fire the deployed one), then set the trigger."""
    deploy(definition)
    _store().add(spec)


def remove_trigger(name: str, kind: str) -> bool:
    if _fallback is not None and _here is None and not os.environ.get(REGISTRY_ENV) and _fallback(False) is None:
        return False
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
        store = _store(start=False)
    except ConfigError:
        raise  # a bad setting must be seen, not read as "no server"
    except FaasError:
        return []
    return [spec.describe() for spec in store.specs() if spec.function == name]


def triggers_stamp() -> int | None:
    """Changes whenever a trigger is set or removed: cheap to poll."""
    try:
        return _store(start=False).directory.stat().st_mtime_ns
    except ConfigError:
        raise
    except (FaasError, OSError):
        return None
