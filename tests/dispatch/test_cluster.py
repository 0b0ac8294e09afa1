"""The same functions on a cluster the platform did not start: an existing scheduler, or a factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jupyter_faas import FaasError, function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import ConfigError
from tests.helpers import wait_for


@function
def where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def external_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `dask scheduler` and one `dask worker`, each its own process, started from another directory."""
    folder = tmp_path_factory.mktemp("external")
    scheduler_file = folder / "scheduler.json"
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = {**os.environ, "PYTHONPATH": ""}
    scheduler = subprocess.Popen(
        [*dask_cli, "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, 60, "the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "2",
             "--host", "127.0.0.1", "--no-dashboard"],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield address
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)


def test_an_existing_scheduler_runs_the_same_functions(
    own_platform: Callable[..., Platform], external_scheduler: str
) -> None:
    platform = own_platform({"faas.cluster.address": external_scheduler, "faas.cluster.idle-timeout": "1s"})
    assert platform.mode == "address"
    assert platform.scheduler_address == external_scheduler
    wait_for(lambda: platform.workers == 1, 60, "the external worker")
    assert where.map(range(10))[3][0] == 9
    value, pid = where(4)
    assert value == 16 and pid != os.getpid()
    # No scaling there: the user's cluster decides, so its worker outlives the keep-alive.
    # Proving that something does not happen needs an observation window: three keep-alives.
    time.sleep(3)
    assert platform.workers == 1
    counts = [n for _, n in platform.scale_events]
    assert 0 not in counts[counts.index(1) :]


def test_an_unreachable_scheduler_is_a_clear_config_error(own_platform: Callable[..., Platform]) -> None:
    began = time.monotonic()
    with pytest.raises(ConfigError, match=r"faas.cluster.address: cannot reach the scheduler at tcp://127.0.0.1:9"):
        own_platform({"faas.cluster.address": "tcp://127.0.0.1:9", "faas.cluster.connect-timeout": "1s"})
    assert time.monotonic() - began < 8  # it gave up after its connect-timeout, not distributed's default


def test_a_factory_cluster_adapts_from_zero(own_platform: Callable[..., Platform]) -> None:
    factory = {
        "module": "distributed",
        "class": "LocalCluster",
        "kwargs": {"n_workers": 0, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
                   "dashboard_address": "127.0.0.1:0", "memory_limit": "1GiB"},
    }  # fmt: skip
    platform = own_platform(
        {"faas.cluster.factory": factory, "faas.cluster.maximum": 1, "faas.cluster.idle-timeout": "1s"}
    )
    assert platform.mode == "factory"
    assert platform.workers == 0
    assert where(5)[0] == 25
    assert platform.workers == 1
    assert where.invocations[-1].cold_start
    # Dask's Adaptive retires the worker once the platform's keep-alive has passed with nothing in flight.
    wait_for(lambda: platform.workers == 0, 30, "the factory cluster to scale to zero")
    assert where(6)[0] == 36


def test_a_factory_that_cannot_be_imported_names_it(own_platform: Callable[..., Platform]) -> None:
    factory = {"module": "no_such_module", "class": "Cluster"}
    with pytest.raises(ConfigError, match=r"cannot import no_such_module.Cluster"):
        own_platform({"faas.cluster.factory": factory})


def test_address_and_factory_together_are_refused(own_platform: Callable[..., Platform], tmp_path: Path) -> None:
    config = {
        "faas.cluster.address": "tcp://127.0.0.1:9",
        "faas.cluster.factory": {"module": "distributed", "class": "LocalCluster"},
    }
    with pytest.raises(ConfigError, match="set only one of faas.cluster.address and faas.cluster.factory"):
        own_platform(config)


def test_two_platforms_share_one_scheduler_without_locking_each_other_out(
    own_platform: Callable[..., Platform], external_scheduler: str
) -> None:
    first = own_platform({"faas.cluster.address": external_scheduler})
    wait_for(lambda: first.workers == 1, 60, "the external worker")
    assert where(2)[0] == 4
    # A second notebook connecting to the same cluster: its own client, plugin and token.
    from jupyter_faas.dispatch.platform import Platform as PlatformClass

    second = PlatformClass()
    try:
        second.start()
        second_square = second.map(where._definition, [((3,), {})])
        second_square.wait()
        assert second_square.values[0][0] == 9
        assert where(4)[0] == 16  # the first platform still gets through
    finally:
        second.shutdown()
    assert where(5)[0] == 25  # and still does after the second one left


def _broken_install(folder: Path) -> dict[str, str]:
    """An environment whose jupyter_faas cannot be imported, as on a worker image without it."""
    package = folder / "shadow" / "jupyter_faas"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('jupyter_faas is not installed on this worker')\n")
    return {**os.environ, "PYTHONPATH": str(folder / "shadow")}


def _start(args: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _scheduler(folder: Path) -> tuple[subprocess.Popen, str]:
    scheduler_file = folder / "scheduler.json"
    scheduler = _start(
        ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(scheduler_file)],
        folder, {**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, 60, "the scheduler file")
    return scheduler, json.loads(scheduler_file.read_text())["address"]


def _worker(address: str, folder: Path, env: dict[str, str]) -> subprocess.Popen:
    return _start(
        ["distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
         "--no-dashboard"],
        folder, env,
    )  # fmt: skip


def test_workers_without_jupyter_faas_are_a_clear_error_at_connect(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    scheduler, address = _scheduler(tmp_path)
    worker = _worker(address, tmp_path, _broken_install(tmp_path))
    try:
        from distributed import Client

        with Client(address, timeout="30s") as probe:
            probe.wait_for_workers(1, timeout=60)
        with pytest.raises(FaasError, match=r"cannot start jupyter-faas .* pip install jupyter-faas=="):
            own_platform({"faas.cluster.address": address})
    finally:
        worker.kill()
        worker.wait(timeout=20)
        _stop(scheduler)


def test_a_call_waiting_for_workers_that_never_start_jupyter_faas_fails_clearly(
    own_platform: Callable[..., Platform], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_faas.dispatch import transport as _dispatch

    monkeypatch.setattr(_dispatch, "SETUP_DEADLINE", 2.0)
    scheduler, address = _scheduler(tmp_path)
    worker = None
    try:
        own_platform({"faas.cluster.address": address})  # no workers yet, so the plugin registers fine
        future = where.submit(2)
        worker = _worker(address, tmp_path, _broken_install(tmp_path))
        with pytest.raises(FaasError, match=r"no worker started jupyter-faas's sandboxes .* pip install"):
            future.result(timeout=120)
        assert where.invocations[-1].status == "error"
    finally:
        # The platform first, while its scheduler is still there to say goodbye to.
        _platform.current(start=False).shutdown()
        if worker is not None:
            worker.kill()
            worker.wait(timeout=20)
        _stop(scheduler)


def test_a_workers_zone_comes_from_a_resource_or_its_name() -> None:
    from jupyter_faas.dispatch.cluster import zone_of

    assert zone_of({"name": "x", "resources": {"zone-eu1": 1}}) == "eu1"
    assert zone_of({"name": "b/3", "resources": {}}) == "b"
    assert zone_of({"name": 3}) is None
    assert zone_of({"name": "worker-1", "resources": {"GPU": 1}}) is None
