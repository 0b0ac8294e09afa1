"""Where `deploy()` goes: this process's endpoints, or those of the Jupyter server that started this kernel."""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_faas._definition import FunctionDefinition
from jupyter_faas._errors import FaasError
from jupyter_faas._registry import Registry
from jupyter_faas._shared import REGISTRY_ENV, URL_ENV

_here: tuple[Registry, str] | None = None


def serve_here(registry: Registry | None, url: str = "") -> None:
    """Called by `jupyter faas serve` and the server extension: deploys in this process go to `registry`."""
    global _here
    _here = None if registry is None else (registry, url)


def _target() -> tuple[Registry, str]:
    if _here is not None:
        return _here
    directory = os.environ.get(REGISTRY_ENV)
    if directory:
        return Registry(Path(directory)), os.environ.get(URL_ENV, "")
    raise FaasError(
        "deploying needs a server to answer requests, and this process has none. Open the notebook in "
        "JupyterLab or Notebook 7 with jupyter-faas installed, or run: jupyter faas serve NOTEBOOK.ipynb"
    )


def deploy(definition: FunctionDefinition) -> str:
    """Deploy `definition` under its name; the endpoint's URL."""
    registry, url = _target()
    registry.deploy(definition)
    return f"{url}faas/functions/{definition.name}"


def undeploy(name: str) -> bool:
    registry, _ = _target()
    return registry.undeploy(name)


def endpoint_url(name: str) -> str | None:
    try:
        _, url = _target()
    except FaasError:
        return None
    return f"{url}faas/functions/{name}"
