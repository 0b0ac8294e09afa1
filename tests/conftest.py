"""Fixtures: the real platform with its LocalCluster, a real IPython shell, and deadline-based waiting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dask
import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_faas
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.gateway import inkernel
from tests.helpers import WASM_CACHE, faas_shell

# A real Jupyter server for the server extension's tests (jp_serverapp, jp_fetch); a backstop for hung tests.
pytest_plugins = ["pytest_jupyter.jupyter_server", "tests.timeout_backstop"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_state_and_shutdown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's durable state lives in a temporary folder, never the user's; the platform stops at the end."""
    state = {"faas.state-dir": str(tmp_path_factory.mktemp("faas-state")), "faas.runtimes.wasm-cache": str(WASM_CACHE)}
    with dask.config.set(state):
        yield
        _platform.current(start=False).shutdown()


@pytest.fixture(autouse=True)
def _no_kernel_gateway_left() -> Iterator[None]:
    """This process is one kernel for every test: a test whose shell made it serve its own functions (a deploy or a
    trigger outside a server) stops that gateway, so no later test finds it, or its platform, in place."""
    yield
    inkernel.stop()


@pytest.fixture
def platform() -> _platform.Platform:
    """The embedded platform shared by the tests that need no special configuration."""
    current = _platform.current(start=False)
    if current.mode not in (None, "embedded"):
        current.shutdown()
    return jupyter_faas.platform()


@pytest.fixture
def own_platform() -> Iterator[Callable[..., _platform.Platform]]:
    """A platform started under the given config; shut down afterwards, whatever happens."""
    started: list[_platform.Platform] = []
    contexts: list[Any] = []

    def start(config: dict[str, Any]) -> _platform.Platform:
        _platform.current(start=False).shutdown()
        context = dask.config.set(config)
        contexts.append(context)
        platform = _platform.current(start=True)
        started.append(platform)
        return platform

    try:
        yield start
    finally:
        for platform in started:
            platform.shutdown()
        for context in reversed(contexts):
            context.__exit__(None, None, None)


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """A real IPython shell with the extension loaded, for one test."""
    with faas_shell() as ip:
        yield ip
