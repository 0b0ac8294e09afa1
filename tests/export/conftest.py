"""Shared by the export tests: one notebook, `serve`'s answers to the contract table, the three exports, fresh venvs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AUTH, start_serve, stop_process_group, wait_for, write_notebook

# A value the notebook's secret has while it is exported: it must appear in no exported file.
SECRET_VALUE = "s3cret-value-never-exported"

CELLS = [
    "import math\nLIMIT = 3\nFACTORS = (1, 2)\nSETTINGS = {'offset': 1}\n"
    "def helper(v):\n    return v * LIMIT + SETTINGS['offset']\n",
    "%%faas square x:int\nx * x",
    "%%faas add a b=10\na + b",
    "%%faas size data:bytes\nlen(data)",
    "%%faas shout text:str\ntext.upper().encode()",
    "%%faas boom --retries 1\nraise ValueError('boom on purpose')",
    "%%faas gather *items\nlen(items)",
    "%%faas scaled x:float --timeout 5s --memory 300MB --concurrency 3\nmath.floor(helper(x)) + sum(FACTORS)",
    "%%faas bad_result\nfloat('nan')",
    "%%faas --every 5m\nimport hashlib\ndef digest(text: str = 'tick'):\n"
    "    return hashlib.sha256(text.encode()).hexdigest()",
    "%%faas keyed --secret API_KEY\nimport os\nlen(os.environ['API_KEY'])",
    "%%faas watched path --on-file inbox\npath",
    "%%faas unused\n0",
    # The kinds: a warm class (setup reads a captured global once), async in both forms, generators.
    "%%faas\nclass Warm:\n    def setup(self):\n        self.base = LIMIT * 10\n"
    "    def teardown(self):\n        self.base = None\n"
    "    def __call__(self, n: int):\n        return self.base + n\n",
    "%%faas\nimport asyncio\nasync def later(a: int, b: int = 1):\n    await asyncio.sleep(0)\n    return a + b\n",
    "%%faas soon x:int\nimport asyncio\nawait asyncio.sleep(0)\nx + LIMIT",
    "%%faas\ndef counted(n: int):\n    for i in range(n):\n        yield {'i': i}\n    if n > 2:\n"
    "        raise ValueError('too many')\n",
    "%%faas\nasync def ticks(n: int):\n    for i in range(n):\n        yield f'tick {i}'\n",
]

# The functions each target serves for the contract table (one server process each).
SERVED = (
    "square", "add", "size", "shout", "boom", "gather", "scaled", "bad_result", "digest", "keyed",
    "Warm", "later", "soon", "counted", "ticks",
)  # fmt: skip

# The generators: serve streams their items as NDJSON; OpenFaaS and Lambda answer one JSON array (documented).
STREAMING = ("counted", "ticks")
NDJSON_TYPE = "application/x-ndjson"

JSON_TYPE = "application/json"

# What an exported function's process gets: no PYTHONPATH, nothing of this test run's own environment.
CLEAN_ENV = {"PATH": os.environ["PATH"]}


@dataclass(frozen=True)
class Request:
    function: str
    body: bytes
    content_type: str | None = JSON_TYPE
    method: str = "POST"


# The contract's rows: what serve answers to each, every target must answer alike.
REQUESTS = [
    Request("square", b'{"x": 7}'),
    Request("square", b"[7]"),
    Request("square", b'{"x": 7}', "application/json; charset=utf-8"),
    Request("square", b'{"x": 3}', None),
    Request("square", b'{"x": "7"}'),
    Request("square", b'{"x": true}'),
    Request("square", b"{}"),
    Request("square", b""),
    Request("square", b'{"x": 1, "y": 2}'),
    Request("square", b"[1, 2]"),
    Request("square", b"not json{"),
    Request("square", b'{"x": NaN}'),
    Request("square", b'{"x": 1e400}'),
    Request("square", b'{"x": ' + b"9" * 5000 + b"}"),
    Request("square", b"7"),
    Request("square", b"7", "text/plain"),
    Request("square", b'{"x": 7}', method="GET"),
    Request("add", b'{"a": 1}'),
    Request("add", b"[1, 2]"),
    Request("add", b'{"a": "x", "b": "y"}'),
    Request("size", b"\x00\xff binary \x80", "application/octet-stream"),
    Request("size", b'{"data": "text"}'),
    Request("shout", b'{"text": "h\\u00e9llo"}'),
    Request("boom", b"{}"),
    Request("gather", b"[1, 2, 3]"),
    Request("gather", b'{"items": 1}'),
    Request("scaled", b'{"x": 2.5}'),
    Request("scaled", b'{"x": 2}'),
    Request("bad_result", b""),
    Request("digest", b""),
    Request("digest", b'{"text": "x"}'),
    Request("keyed", b"{}"),
    Request("Warm", b'{"n": 2}'),
    Request("Warm", b"[5]"),
    Request("Warm", b'{"n": "x"}'),
    Request("later", b'{"a": 2}'),
    Request("later", b"[2, 3]"),
    Request("later", b'{"b": 2}'),
    Request("soon", b'{"x": 4}'),
    Request("counted", b'{"n": 2}'),
    Request("counted", b'{"n": 0}'),
    Request("counted", b'{"n": 3}'),
    Request("counted", b'{"n": "2"}'),
    Request("ticks", b"[3]"),
]


def normalized(status: int, content_type: str, body: bytes) -> tuple[int, str, Any]:
    """An answer as the contract fixes it: the status, the media type, and the body (JSON decoded)."""
    media = content_type.split(";", 1)[0].strip()
    value: Any = json.loads(body) if media == JSON_TYPE else body
    if media == NDJSON_TYPE:
        value = [json.loads(line) for line in body.splitlines()]
    if isinstance(value, dict) and value.get("error", {}).get("type") == "MissingSecret":
        # The message names where the secret is missing from, which differs by design.
        value = {"error": {"type": "MissingSecret"}}
    return status, media, value


def collected(answer: tuple[int, str, Any]) -> tuple[int, str, Any]:
    """Serve's NDJSON answer as a one-body target gives it, by design: the same items as one JSON array, or its
    error alone when the generator failed part-way."""
    status, media, value = answer
    if media != NDJSON_TYPE:
        return answer
    if value and isinstance(value[-1], dict) and "error" in value[-1]:
        # A failure part-way: serve has sent the items so far; one body can only be the error.
        return 500, JSON_TYPE, value[-1]
    return status, JSON_TYPE, value


def headers_for(request: Request) -> dict[str, str]:
    return {} if request.content_type is None else {"Content-Type": request.content_type}


def send(url: str, request: Request, extra: dict[str, str] | None = None) -> tuple[int, str, Any]:
    response = httpx.request(
        request.method, url, content=request.body, headers={**headers_for(request), **(extra or {})}, timeout=60
    )
    return normalized(response.status_code, response.headers.get("content-type", ""), response.content)


@pytest.fixture(scope="session")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export-notebook")
    (folder / "inbox").mkdir()
    return write_notebook(folder / "functions.ipynb", CELLS)


def run_export(notebook: Path, target: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_faas.cli", "export", str(notebook), "--to", target, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "API_KEY": SECRET_VALUE, "DASK_FAAS__STATE_DIR": str(out.parent / "state")},
    )


@dataclass
class Prepared:
    """The session's shared work: serve's answers to the table, and the CLI's runs."""

    serve_answers: dict[Request, tuple[int, str, Any]]
    exports: dict[str, tuple[Path, str]]
    bad_target: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def prepared(notebook: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The three exports of the notebook by the real CLI (and one with a bad --to), run side by side while a real
    `jupyter faas serve` of the same notebook answers every row of the table; serve is stopped after."""
    root = tmp_path_factory.mktemp("exports")
    # knative picks its functions with --function (all but `unused`); the others export every one.
    picked = [item for name in (*SERVED, "watched") for item in ("--function", name)]
    with ThreadPoolExecutor(4) as pool:
        runs = {
            "knative": pool.submit(run_export, notebook, "knative", root / "knative", *picked),
            "openfaas": pool.submit(run_export, notebook, "openfaas", root / "openfaas"),
            "lambda": pool.submit(run_export, notebook, "lambda", root / "lambda"),
        }
        bad = pool.submit(run_export, notebook, "heroku", root / "heroku")
        served = start_serve(notebook, tmp_path_factory.mktemp("serve-state"))
        try:
            answers = {r: send(f"{served.url}faas/functions/{r.function}", r, AUTH) for r in REQUESTS}
        finally:
            stop_process_group(served.process)
        done = {}
        for target, future in runs.items():
            result = future.result()
            assert result.returncode == 0, result.stderr
            done[target] = (root / target, result.stdout + result.stderr)
        return Prepared(answers, done, bad.result())


@pytest.fixture(scope="session")
def serve_answers(prepared: Prepared) -> dict[Request, tuple[int, str, Any]]:
    """What a real `jupyter faas serve` of the notebook answers to every row."""
    return prepared.serve_answers


@pytest.fixture(scope="session")
def exports(prepared: Prepared) -> dict[str, tuple[Path, str]]:
    """The three exports: target -> (folder, what the CLI printed)."""
    return prepared.exports


def fresh_venv(folder: Path, requirement_files: list[Path], *packages: str) -> tuple[Path, float]:
    """A new virtual environment without jupyter-faas, with the requirements installed (pip's cache makes it
    quick); its python and how long the install took."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    arguments = [item for path in requirement_files for item in ("-r", str(path))]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", *arguments, *packages],
        check=True,
        timeout=300,
    )
    elapsed = time.monotonic() - began
    # Run from the venv's folder: the checkout beside the tests must not be importable by accident.
    check = subprocess.run(
        [str(python), "-c", "import jupyter_faas"], cwd=folder, env=CLEAN_ENV, capture_output=True, timeout=60
    )
    assert check.returncode != 0, "the fresh venv must not have jupyter-faas"
    return python, elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; every one is stopped after it, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            stop_process_group(process)


def start_servers(
    commands: dict[str, tuple[list[str], Path, dict[str, str]]], ready_path: str, started: list[subprocess.Popen[bytes]]
) -> dict[str, str]:
    """Start one server per function (command, cwd, env with PORT filled in), all at once; name -> URL once ready."""
    urls = {}
    for name, (command, cwd, env) in commands.items():
        port = free_port()
        environment = {key: value.replace("{PORT}", str(port)) for key, value in env.items()}
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        urls[name] = f"http://127.0.0.1:{port}/"

    def ready(url: str) -> bool:
        try:
            return httpx.get(url + ready_path, timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    for name, url in urls.items():
        wait_for(lambda url=url: ready(url), timeout=60, message=f"the exported {name} to answer")
    return urls
