"""Fixtures: the real platform with its LocalCluster, a real IPython shell, and deadline-based waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from nbclient import NotebookClient

import jupyter_faas
from jupyter_faas import _platform

# A real Jupyter server for the server extension's tests: jp_serverapp, jp_fetch.
pytest_plugins = ["pytest_jupyter.jupyter_server"]


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM a process started with start_new_session, and its children; SIGKILL what is left after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, message: str = "condition") -> Any:
    """Poll until `condition()` is truthy, failing the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def _isolated_state_and_shutdown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's durable state lives in a temporary folder, never the user's; the platform stops at the end."""
    with dask.config.set({"faas.state-dir": str(tmp_path_factory.mktemp("faas-state"))}):
        yield
        _platform.current(start=False).shutdown()


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


@contextlib.contextmanager
def faas_shell() -> Iterator[InteractiveShell]:
    """The real IPython shell with the extension loaded; the names defined meanwhile are removed after."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_faas")
    before = set(ip.user_ns)
    try:
        yield ip
    finally:
        for name in set(ip.user_ns) - before:
            del ip.user_ns[name]


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """A real IPython shell with the extension loaded, for one test."""
    with faas_shell() as ip:
        yield ip


def run_cells(sources: list[str], folder: Path, timeout: int = 180) -> Any:
    """Run the cells in order in a new real kernel (nbclient), in `folder`; the executed notebook."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        startup_timeout=120,
        resources={"metadata": {"path": str(folder)}},
    )
    # execute() starts the kernel and shuts it down when it returns or raises.
    client.execute()
    return notebook


def outputs(cell: Any, output_type: str) -> list[Any]:
    """A cell's outputs of one type: "stream", "error", "display_data", "execute_result"."""
    return [output for output in cell.outputs if output.output_type == output_type]


def run_ok(shell: InteractiveShell, code: str) -> Any:
    """Run a cell that must succeed; returns its value."""
    result = shell.run_cell(code)
    if not result.success:
        raise AssertionError(f"cell failed: {result.error_before_exec or result.error_in_exec!r}\n{code}")
    return result.result
