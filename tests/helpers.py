"""Helpers the tests share: waiting, processes, IPython shells, notebooks, and `jupyter faas serve` as a subprocess."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from nbclient import NotebookClient

# Built WebAssembly components, kept across test sessions (a build takes 10-25 s and hundreds of MB): CI may keep
# this folder between runs. A session that finds it empty builds what it needs once.
WASM_CACHE = Path(os.environ.get("FAAS_TEST_WASM_CACHE") or Path.home() / ".cache" / "jupyter-faas-tests" / "wasm")


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


# `jupyter faas serve` as a subprocess, on a free port (tests/gateway/test_serve.py and others).
TOKEN = "serve-test-token"


AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What serve prints once it answers HTTP, before its notebook has run (health says "starting" then).
EARLY_ANNOUNCEMENT = r"answering at (http://\S+/) \(health: starting\)"


def write_notebook(path: Path, sources: list[str], skip_tagged: str | None = None) -> Path:
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    cells.insert(1, nbformat.v4.new_markdown_cell("Markdown cells are not run."))
    if skip_tagged is not None:
        cells.append(nbformat.v4.new_code_cell(skip_tagged, metadata={"tags": ["faas-skip"]}))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    output: list[str]
    reader: threading.Thread

    def post(self, name: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}faas/functions/{name}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)


def _read_lines(stream: Any, lines: queue.Queue, kept: list[str]) -> None:
    for line in stream:
        kept.append(line)
        lines.put(line)


def start_serve(
    notebook: Path,
    state: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    umask: int = -1,
    token: str | None = TOKEN,
    announcement: str = r"function\(s\) of .* at (http://\S+/)",
) -> Served:
    """Start serve on a free port and wait for its announcement; the caller stops it with stop_process_group.

    `umask` is the one serve runs under (-1: this process's own). `announcement`: the line to wait for, its
    group the URL (the default: once ready; EARLY_ANNOUNCEMENT: as soon as it answers, while its notebook runs).
    `token` None: serve makes its own (and prints it).
    """
    environment = {**os.environ, "DASK_FAAS__STATE_DIR": str(state), **(env or {})}
    given = [] if token is None else [f"--token={token}"]
    if token is None:
        environment.pop("JUPYTER_FAAS_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_faas.cli", "serve", str(notebook), "--port", "0", *given, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        start_new_session=True,
        umask=umask,
    )
    lines: queue.Queue = queue.Queue()
    kept: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines, kept), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        found = re.search(announcement, line)
        if found:
            return Served(found.group(1), process, kept, reader)
    stop_process_group(process)
    pytest.fail("jupyter faas serve did not start:\n" + "".join(kept))


def wait_for_outcome(served: Served, invocation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        state = served.get(f"faas/api/invocations/{invocation_id}", headers=AUTH).json()
        if state["status"] not in ("queued", "running"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def invocations_of(server: Served, name: str) -> list[dict[str, Any]]:
    response = server.get(f"faas/api/functions/{name}/invocations", params={"limit": 1000}, headers=AUTH)
    return response.json()["invocations"] if response.status_code == 200 else []


# The reliability suite's serve: its own token, and the state dir it was started on.
RELIABILITY_TOKEN = "reliability-token-0123456789"
RELIABILITY_AUTH = {"Authorization": f"Bearer {RELIABILITY_TOKEN}"}

# Functions of every shape the contract knows: typed and untyped, keywords, *args and **kwargs, bytes in and
# out, one that raises (its 500 is the function's own), and one whose failures become dead letters.
RELIABILITY_CELLS = [
    "%%faas square x:int\nx * x",
    "%%faas add a:float b:float=1.0\na + b",
    "%%faas echo text:str flag:bool=False\ntext.upper() if flag else text",
    "%%faas size data:bytes\nlen(data)",
    "%%faas shout text:str\ntext.upper().encode()",
    "%%faas gather *items\nlen(items)",
    "%%faas options **named\nsorted(named)",
    "%%faas shapes xs:list d:dict\n[len(xs), len(d)]",
    "%%faas nothing\nNone",
    "%%faas boom\nraise ValueError('boom on purpose')",
    "%%faas reject data:bytes --retries 0\nraise ValueError(f'rejected {len(data)} bytes')",
]


@dataclass
class StateServed(Served):
    """A running `jupyter faas serve` (see Served), with the state dir it was started on."""

    state: Path

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def works(self) -> bool:
        """The platform still answers a good request, with the right result."""
        response = self.post("square", json={"x": 12}, headers=RELIABILITY_AUTH)
        return response.status_code == 200 and response.json() == 144


def start_reliability_serve(
    notebook: Path, state: Path, *extra: str, env: dict[str, str] | None = None, umask: int = 0
) -> StateServed:
    """Start serve on a free port and wait for its announcement; the caller stops it with stop_process_group.

    By default under umask 0, so that any file it creates without an explicit mode would be world-writable.
    """
    started = start_serve(notebook, state, *extra, env=env, umask=umask, token=RELIABILITY_TOKEN)
    return StateServed(started.url, started.process, started.output, started.reader, state)


@contextlib.contextmanager
def serving(folder: Path, cells: list[str], env: dict[str, str]) -> Iterator[StateServed]:
    """serve of a notebook of `cells` in `folder`, checked to answer a good request first; always stopped."""
    server = start_reliability_serve(write_notebook(folder / "functions.ipynb", cells), folder / "state", env=env)
    try:
        assert server.works()
        yield server
    finally:
        stop_process_group(server.process)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON error of an answer: {"error": {"type", "message", ...}}, never a stack trace."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"type", "message"} <= set(body["error"]), body
    assert "Traceback" not in response.text
    return body["error"]


def shared_prefix(first: str, second: str) -> int:
    """How many leading characters two strings have in common."""
    count = 0
    for a, b in zip(first, second):  # noqa: B905 - stops at the shorter on purpose
        if a != b:
            break
        count += 1
    return count
