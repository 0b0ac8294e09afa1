"""Starting `jupyter faas serve` as a real subprocess for the reliability suite, and reading its answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import test_serve
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


# The notebooks these tests serve are written as tests/test_serve.py writes its own.
write_notebook = test_serve.write_notebook


@dataclass
class Served(test_serve.Served):
    """A running `jupyter faas serve` (see tests/test_serve.py), with the state dir it was started on."""

    state: Path

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def works(self) -> bool:
        """The platform still answers a good request, with the right result."""
        response = self.post("square", json={"x": 12}, headers=AUTH)
        return response.status_code == 200 and response.json() == 144


def start_serve(notebook: Path, state: Path, *extra: str, env: dict[str, str] | None = None, umask: int = 0) -> Served:
    """Start serve on a free port and wait for its announcement; the caller stops it with stop_process_group.

    By default under umask 0, so that any file it creates without an explicit mode would be world-writable.
    """
    started = test_serve.start_serve(notebook, state, *extra, env=env, umask=umask, token=TOKEN)
    return Served(started.url, started.process, started.output, started.reader, state)


@contextlib.contextmanager
def serving(folder: Path, cells: list[str], env: dict[str, str]) -> Iterator[Served]:
    """serve of a notebook of `cells` in `folder`, checked to answer a good request first; always stopped."""
    server = start_serve(write_notebook(folder / "functions.ipynb", cells), folder / "state", env=env)
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
