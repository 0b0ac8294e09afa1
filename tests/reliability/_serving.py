"""Starting `jupyter faas serve` as a real subprocess for the reliability suite, and reading its answers."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from conftest import stop_process_group

TOKEN = "reliability-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Functions of every shape the contract knows: typed and untyped, keywords, *args and **kwargs, bytes in and
# out, one that raises (its 500 is the function's own), and one whose failures become dead letters.
CELLS = [
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


def write_notebook(path: Path, sources: list[str]) -> Path:
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), path)
    return path


@dataclass
class Served:
    """A running `jupyter faas serve`: its URL, its process (a session leader) and what it printed."""

    url: str
    process: subprocess.Popen
    output: list[str]
    reader: threading.Thread
    state: Path

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def post(self, name: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}faas/functions/{name}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)

    def works(self) -> bool:
        """The platform still answers a good request, with the right result."""
        response = self.post("square", json={"x": 12}, headers=AUTH)
        return response.status_code == 200 and response.json() == 144


def _read_lines(stream: Any, lines: queue.Queue, kept: list[str]) -> None:
    for line in stream:
        kept.append(line)
        lines.put(line)


def start_serve(notebook: Path, state: Path, *extra: str, env: dict[str, str] | None = None, umask: int = 0) -> Served:
    """Start serve on a free port and wait for its announcement; the caller stops it with stop_process_group.

    By default under umask 0, so that any file it creates without an explicit mode would be world-writable.
    """
    environment = {**os.environ, "DASK_FAAS__STATE_DIR": str(state), **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_faas._app", "serve", str(notebook), "--port", "0", "--token", TOKEN, *extra],
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
        found = re.search(r"function\(s\) of .* at (http://\S+/)", line)
        if found:
            return Served(found.group(1), process, kept, reader, state)
    stop_process_group(process)
    pytest.fail("jupyter faas serve did not start:\n" + "".join(kept))


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON error of an answer: {"error": {"type", "message", ...}}, never a stack trace."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"type", "message"} <= set(body["error"]), body
    assert "Traceback" not in response.text
    return body["error"]
