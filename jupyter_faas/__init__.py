"""jupyter-faas: serverless functions native to Jupyter, running on an elastic Dask cluster."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jupyter_faas._version import __version__ as __version__  # the one place it is written

if TYPE_CHECKING:
    from jupyter_faas.client.function import FaasFunction, function
    from jupyter_faas.dispatch.platform import Platform
    from jupyter_faas.errors import FaasError, FaasMemoryError, FaasTimeout, RemoteError, WorkerLost
    from jupyter_faas.record.records import InvocationRecord
    from jupyter_faas.ui.widgets import dashboard

__all__ = [
    "FaasError",
    "FaasFunction",
    "FaasMemoryError",
    "FaasTimeout",
    "InvocationRecord",
    "RemoteError",
    "WorkerLost",
    "dashboard",
    "function",
    "invocations",
    "platform",
    "triggers",
]

# Public names load on first access, so a worker's sandbox process can import the package cheaply.
_LAZY = {
    "FaasError": "jupyter_faas.errors",
    "FaasMemoryError": "jupyter_faas.errors",
    "FaasTimeout": "jupyter_faas.errors",
    "RemoteError": "jupyter_faas.errors",
    "WorkerLost": "jupyter_faas.errors",
    "FaasFunction": "jupyter_faas.client.function",
    "function": "jupyter_faas.client.function",
    "InvocationRecord": "jupyter_faas.record.records",
    "invocations": "jupyter_faas.client.history",
    "dashboard": "jupyter_faas.ui.widgets",
}


def triggers() -> list[dict[str, Any]]:
    """The schedules and file triggers set on the platform that owns this one (the server's, or serve's)."""
    from jupyter_faas.client import deploy as _deploy

    return _deploy.triggers()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_faas' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def platform() -> Platform:
    """The running platform of this process: started on first use, with its elastic cluster."""
    from jupyter_faas.dispatch import platform as _platform

    return _platform.current()


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_faas`: registers the %%faas magic."""
    from jupyter_faas.client.magic import FaasMagics

    # Imported for what it sets up: deploys in a kernel no Jupyter server owns go to a gateway of its own.
    from jupyter_faas.gateway import inkernel  # noqa: F401

    ipython.register_magics(FaasMagics)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter server's entry point: the extension that owns the server's platform and endpoints."""
    from jupyter_faas.gateway.extension import extension_points

    return extension_points()
