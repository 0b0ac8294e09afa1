"""The slim install for workers: jupyter-faas-worker, in a fresh venv, runs a real `dask worker` serving invocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client
from packaging.requirements import Requirement

from jupyter_faas.client.function import function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import FaasTimeout
from tests.helpers import stop_process_group, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "pyproject.toml"
WORKER = ROOT / "jupyter-faas-worker" / "pyproject.toml"
# What the notebook side brings and a worker never imports: none of it may be in the worker install.
NOTEBOOK_ONLY = ["jupyterlab", "jupyter_server", "bokeh", "IPython", "ipywidgets", "nbformat", "prometheus_client"]


def _requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    made = [Requirement(text) for text in project["dependencies"]]
    return {requirement.name.lower().replace("_", "-"): requirement for requirement in made}


def test_the_worker_install_is_a_subset_of_the_full_one_with_the_same_floors() -> None:
    full, worker = _requirements(FULL), _requirements(WORKER)
    assert set(worker) <= set(full), sorted(set(worker) - set(full))
    drifted = {name: (str(full[name]), str(r)) for name, r in worker.items() if full[name].specifier != r.specifier}
    assert not drifted
    # Both read the one version, so `pip install jupyter-faas-worker==X` is the worker side of jupyter-faas X.
    for pyproject in (FULL, WORKER):
        assert "version" in tomllib.loads(pyproject.read_text())["project"]["dynamic"]
    assert tomllib.loads(WORKER.read_text())["tool"]["hatch"]["version"]["path"] == "../jupyter_faas/_version.py"


def test_the_worker_extras_are_subsets_of_the_full_ones_with_the_same_floors() -> None:
    full = tomllib.loads(FULL.read_text())["project"]["optional-dependencies"]
    worker = tomllib.loads(WORKER.read_text())["project"]["optional-dependencies"]
    for extra, requirements in worker.items():
        known = {Requirement(r).name: Requirement(r).specifier for r in full[extra]}
        assert {Requirement(r).name: Requirement(r).specifier for r in requirements}.items() <= known.items()


def test_imported_packages_are_declared_and_croniter_is_a_maintained_release() -> None:
    full = _requirements(FULL)
    assert "packaging" in full  # definition/requirements.py imports it
    # croniter 6.1 is the first release of its maintained line (pallets-eco); 2.x to 6.0 are unmaintained.
    for pyproject in (FULL, WORKER):
        croniter = _requirements(pyproject)["croniter"]
        assert not croniter.specifier.contains("6.0.0") and croniter.specifier.contains("6.1.0")


@dataclass
class SlimEnv:
    python: Path
    dask: Path


@pytest.fixture(scope="module")
def slim_env(tmp_path_factory: pytest.TempPathFactory) -> SlimEnv:
    """A fresh venv with only `pip install jupyter-faas-worker`, built from this checkout."""
    folder = tmp_path_factory.mktemp("slim")
    wheels = folder / "wheels"
    env = {**os.environ, "PYTHONPATH": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(WORKER.parent)]
    subprocess.run(build, check=True, env=env, capture_output=True, timeout=300)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("jupyter_faas_worker-*.whl")
    install = [str(python), "-m", "pip", "install", "-q", str(wheel)]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return SlimEnv(python, venv / "bin" / "dask")


def _importable(env: SlimEnv, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    found = subprocess.run([str(env.python), "-c", probe], env={**os.environ, "PYTHONPATH": ""}, timeout=60)
    return found.returncode == 0


def test_the_worker_install_has_no_notebook_packages(slim_env: SlimEnv) -> None:
    assert not [module for module in NOTEBOOK_ONLY if _importable(slim_env, module)]
    # What runs on a worker, and the stand-in through which a function calls another inside a sandbox.
    modules = ["jupyter_faas", *(f"jupyter_faas.worker.{name}" for name in ("plugin", "sandbox", "children"))]
    code = "; ".join(f"import {module}" for module in modules)
    done = subprocess.run([str(slim_env.python), "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr


@dataclass
class SlimCluster:
    address: str
    processes: list[subprocess.Popen]


@pytest.fixture(scope="module")
def slim_cluster(slim_env: SlimEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlimCluster]:
    """`dask scheduler` and one `dask worker`, both from the worker-only venv, in a folder of their own."""
    folder = tmp_path_factory.mktemp("slim-cluster")
    env = {**os.environ, "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)

    def spawn(*args: str) -> subprocess.Popen:
        return subprocess.Popen([str(slim_env.dask), *args], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    scheduler_file = folder / "scheduler.json"
    processes = [spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(scheduler_file))]  # fmt: skip
    try:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, 60, "the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(spawn("worker", address, "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard",
                               "--name", "slim-0", "--memory-limit", "2GiB"))  # fmt: skip

        def workers() -> int:
            with Client(address, timeout="10s") as client:
                return len(client.scheduler_info(n_workers=-1)["workers"])

        wait_for(lambda: workers() == 1, 60, "the slim worker")
        yield SlimCluster(address, processes)
    finally:
        for process in reversed(processes):
            stop_process_group(process)


@function(timeout="2s")
def cube(x: int) -> int:
    print(f"cubing {x}")
    return x**3


@function
def cube_plus_one(x: int) -> int:
    return cube(x) + 1  # a call made inside a function: it goes back through the worker to the platform


@function(timeout="1s", retries=0)
def sleeps() -> None:
    import time

    time.sleep(30)


def test_a_worker_only_install_serves_invocations(
    own_platform: Callable[..., Platform], slim_cluster: SlimCluster
) -> None:
    platform = own_platform({"faas.cluster.address": slim_cluster.address})
    assert cube(3) == 27
    assert cube.map(range(50)) == [x**3 for x in range(50)]
    records = platform.records("cube")
    with Client(slim_cluster.address, timeout="10s") as client:
        (worker,) = client.scheduler_info(n_workers=-1)["workers"]
    assert {record.worker for record in records} == {worker}
    assert "cubing 3" in (records[0].output or "")
    # The sandbox's hard timeout is enforced there too: the slim worker kills the call and keeps serving.
    with pytest.raises(FaasTimeout):
        sleeps()
    assert cube(4) == 64
    # Composition on the slim worker: the inner call runs, and is a child of the outer one.
    assert cube_plus_one(2) == 9
    (child,) = [r for r in platform.records("cube") if r.parent is not None]
    assert child.parent == platform.records("cube_plus_one")[-1].id
