"""Beyond one machine: the same notebook on a real Dask cluster started with Dask's own command-line tools."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from distributed import Client

from jupyter_faas.client.function import FaasFunction, function
from jupyter_faas.dispatch.platform import Platform
from tests.helpers import (
    AUTH,
    WASM_CACHE,
    invocations_of,
    start_serve,
    stop_process_group,
    wait_for,
    write_notebook,
)
from tests.worker.runtimes.test_wasm import EDGE
from tests.worker.runtimes.test_wasm import LINE as WASM_LINE

DASK = str(Path(sys.executable).parent / "dask")


@dataclass
class ExternalCluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]

    def worker_addresses(self) -> set[str]:
        with Client(self.address, timeout="10s") as client:
            return set(client.scheduler_info(n_workers=-1)["workers"])


ENV = {**os.environ, "PYTHONPATH": ""}


def spawn(command: list[str], folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def start_scheduler(folder: Path, host: str) -> tuple[subprocess.Popen, str]:
    """`dask scheduler` on `host`; the process and its address, once its scheduler file is written."""
    scheduler_file = folder / "scheduler.json"
    command = [DASK, "scheduler", "--host", host, "--port", "0", "--no-dashboard", "--scheduler-file"]
    scheduler = spawn([*command, str(scheduler_file)], folder)
    try:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, 60, "the scheduler file")
    except BaseException:
        stop_process_group(scheduler)
        raise
    return scheduler, json.loads(scheduler_file.read_text())["address"]


def start_cluster(folder: Path, workers: int = 2) -> ExternalCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, run from a folder of their own."""
    scheduler, address = start_scheduler(folder, "127.0.0.1")
    started: list[subprocess.Popen] = []
    try:
        for n in range(workers):
            command = [DASK, "worker", address, "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard",
                       "--name", f"external-{n}", "--memory-limit", "2GiB"]  # fmt: skip
            started.append(spawn(command, folder))
        cluster = ExternalCluster(address, scheduler, started)
        wait_for(lambda: len(cluster.worker_addresses()) == workers, 60, f"{workers} external workers")
        return cluster
    except BaseException:
        for process in [*started, scheduler]:
            stop_process_group(process)
        raise


def stop_cluster(cluster: ExternalCluster) -> None:
    for process in [*cluster.workers, cluster.scheduler]:
        stop_process_group(process)


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("external"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


NOTEBOOK_CELLS = [
    "%%faas square x:int --http\nx * x",
    "assert square(7) == 49",
    "assert square.map(range(200)) == [x * x for x in range(200)]",
    "%%faas ticker --every 1s\n'tick'",
    # A function that calls another: the call goes back to serve's platform, through the external worker.
    "%%faas twice x:int --http\nsquare(x) * 2",
]


def test_the_same_notebook_runs_unchanged_on_an_external_cluster(external: ExternalCluster, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cells = [*NOTEBOOK_CELLS, f"%%faas shout path --on-file {inbox}\nopen(path).read().upper()"]
    notebook = write_notebook(tmp_path / "same.ipynb", cells)
    # The only difference from the embedded cluster: where the scheduler is.
    env = {"DASK_FAAS__CLUSTER__ADDRESS": external.address}
    server = start_serve(notebook, tmp_path / "state", env=env)
    try:
        # The calls and the map ran while serve ran the notebook; HTTP and the triggers now.
        for x in (3, 4, 5):
            response = httpx.post(f"{server.url}faas/functions/square", json={"x": x}, headers=AUTH, timeout=60)
            assert response.json() == x * x
        response = httpx.post(f"{server.url}faas/functions/twice", json={"x": 6}, headers=AUTH, timeout=60)
        assert response.json() == 72
        caller = invocations_of(server, "twice")[-1]
        answer = server.get(f"faas/api/invocations/{caller['id']}", headers=AUTH).json()
        assert [(child["function"], child["parent"]) for child in answer["children"]] == [("square", caller["id"])]
        assert [row["function"] for row in answer["call_tree"]["calls"]] == ["twice", "square"]
        (inbox / "hello.txt").write_text("hello")
        wait_for(lambda: invocations_of(server, "shout"), 30, "the file trigger")
        wait_for(lambda: invocations_of(server, "ticker"), 30, "the schedule")
        records = invocations_of(server, "square")
        assert Counter(r["trigger"] for r in records) == Counter({"call": 202, "http": 3})
        assert [r["parent"] for r in records if r["parent"]] == [caller["id"]]
        assert {r["status"] for r in records} == {"ok"}
        # Every invocation ran on the external workers, and the map used both of them.
        external_workers = external.worker_addresses()
        assert {r["worker"] for r in records} == external_workers
        assert invocations_of(server, "shout")[0]["worker"] in external_workers
        platform = server.get("faas/api/platform", headers=AUTH).json()
        assert platform["workers"] == 2
    finally:
        stop_process_group(server.process)


@function(retries=2, timeout="30s")
def doubled_slowly(x: int) -> int:
    import time

    time.sleep(0.02)
    return 2 * x


def test_a_worker_killed_mid_map_loses_nothing_with_retries(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    cluster = start_cluster(tmp_path)
    platform = None
    try:
        platform = own_platform({"faas.cluster.address": cluster.address})
        calls = [((x,), {}) for x in range(400)]
        results = platform.map(doubled_slowly._definition, calls)
        wait_for(lambda: results.done >= 60, 60, "the map to be under way")
        # SIGKILL the whole `dask worker` process group: worker, nanny and sandboxes, with calls in flight.
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)
        assert results.wait(timeout=120)
        assert results.errors == [None] * 400
        assert results.values == [2 * x for x in range(400)]
        records = [r for r in platform.records("doubled_slowly") if r.status == "ok"]
        # Nothing doubled: one successful record per invocation.
        ids = [r.id for r in records]
        assert len(ids) == len(set(ids)) == 400
        assert max(r.attempts for r in records) >= 2  # some really were retried after the kill
    finally:
        # The platform goes first: a client left behind would wait on the stopped scheduler.
        if platform is not None:
            platform.shutdown()
        stop_cluster(cluster)


def test_the_records_name_the_external_workers(
    own_platform: Callable[..., Platform], external: ExternalCluster
) -> None:
    platform = own_platform({"faas.cluster.address": external.address})
    assert platform.mode == "address"
    fn: FaasFunction = doubled_slowly
    assert fn.map(range(40)) == [2 * x for x in range(40)]
    assert {r.worker for r in fn.invocations[-40:]} <= external.worker_addresses()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[list[tuple[str, str]]]:
    """Two network namespaces, each a host with its own address, linked to this one by a veth pair.

    Yields [(namespace, host address)], with this side of each link at x.x.x.1.
    """
    tag = f"{os.getpid() % 10000}"
    made: list[str] = []
    hosts = []
    try:
        for n in (1, 2):
            namespace, host_side, ns_side = f"faas{tag}h{n}", f"fh{tag}{n}", f"fn{tag}{n}"
            subnet = f"10.{200 + os.getpid() % 50}.{n}"
            _ip("netns", "add", namespace)
            made.append(namespace)
            _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
            _ip("link", "set", ns_side, "netns", namespace)
            _ip("addr", "add", f"{subnet}.1/24", "dev", host_side)
            _ip("link", "set", host_side, "up")
            for command in (
                ["addr", "add", f"{subnet}.2/24", "dev", ns_side],
                ["link", "set", ns_side, "up"],
                ["link", "set", "lo", "up"],
                ["route", "add", "default", "via", f"{subnet}.1"],
            ):
                _ip("netns", "exec", namespace, "ip", *command)
            hosts.append((namespace, f"{subnet}.2"))
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        detail = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) and e.stderr else e
        pytest.skip(f"network namespaces cannot be made on this machine (ip netns, veth): {detail}")
    try:
        yield hosts
    finally:
        for namespace in made:
            # Deleting a namespace deletes its end of the veth pair, and with it ours.
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def test_workers_on_separate_hosts_with_their_own_addresses(
    own_platform: Callable[..., Platform], two_hosts: list[tuple[str, str]], tmp_path: Path
) -> None:
    first_link = two_hosts[0][1].rsplit(".", 1)[0] + ".1"
    # The scheduler listens on this host's end of the first link; the second host reaches it through us.
    scheduler, address = start_scheduler(tmp_path, first_link)
    processes = [scheduler]
    platform = None
    try:
        for namespace, host in two_hosts:
            command = ["ip", "netns", "exec", namespace, DASK, "worker", address, "--host", host,
                       "--nthreads", "2", "--no-dashboard"]  # fmt: skip
            processes.append(spawn(command, tmp_path))
        cluster = ExternalCluster(address, processes[0], processes[1:])
        wait_for(lambda: len(cluster.worker_addresses()) == 2, 60, "a worker on each host")
        platform = own_platform({"faas.cluster.address": address})
        assert doubled_slowly.map(range(100)) == [2 * x for x in range(100)]
        hosts = {r.worker.split("//")[1].rsplit(":", 1)[0] for r in doubled_slowly.invocations[-100:]}
        assert hosts == {host for _, host in two_hosts}
    finally:
        if platform is not None:
            platform.shutdown()
        for process in reversed(processes):
            stop_process_group(process)


# -- zones: high availability in small ------------------------------------------------------------------


@function(zones=2, retries=2, timeout="30s")
def zoned(x: int) -> int:
    import time

    time.sleep(0.02)
    return x + 1


def zone_of(cluster_info: dict[str, dict], worker: str) -> str:
    return str(cluster_info[worker]["name"]).split("/", 1)[0]


def test_a_zoned_function_spreads_over_zones_and_survives_losing_one(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    scheduler, address = start_scheduler(tmp_path, "127.0.0.1")
    workers = []
    platform = None
    try:
        for zone in ("a", "b"):
            command = [DASK, "worker", address, "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard",
                       "--name", f"{zone}/0"]  # fmt: skip
            workers.append(spawn(command, tmp_path))
        cluster = ExternalCluster(address, scheduler, workers)
        wait_for(lambda: len(cluster.worker_addresses()) == 2, 60, "a worker in each zone")
        with Client(address, timeout="10s") as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
        platform = own_platform({"faas.cluster.address": address})
        # Spread: calls one at a time still land in both zones, turn by turn.
        assert [zoned(x) for x in range(10)] == list(range(1, 11))
        zones = [zone_of(info, r.worker) for r in zoned.invocations[-10:]]
        assert set(zones) == {"a", "b"}
        assert max(zones.count("a"), zones.count("b")) <= 6
        # Lose every worker of zone a mid-load: the function keeps answering, and nothing is lost.
        results = platform.map(zoned._definition, [((x,), {}) for x in range(300)])
        wait_for(lambda: results.done >= 40, 60, "the load to be under way")
        os.killpg(workers[0].pid, signal.SIGKILL)
        assert results.wait(timeout=120)
        assert results.errors == [None] * 300
        assert results.values == [x + 1 for x in range(300)]
        assert zoned(41) == 42
        assert zone_of(info, zoned.invocations[-1].worker) == "b"
    finally:
        if platform is not None:
            platform.shutdown()
        for process in [*workers, scheduler]:
            stop_process_group(process)


def test_the_embedded_cluster_can_simulate_zones(own_platform: Callable[..., Platform]) -> None:
    platform = own_platform({"faas.cluster.zones": 2, "faas.cluster.maximum": 2, "faas.cluster.idle-timeout": "30s"})
    assert zoned(1) == 2
    # While a zoned function is warm, the platform keeps a worker in each zone.
    wait_for(lambda: platform.workers == 2, 30, "a worker per zone")
    # Calls never wait for a zone: until the second worker's sandboxes are up, they all go to the first.
    wait_for(lambda: platform._dispatcher.capacity() == 4, 30, "both workers' sandboxes")  # type: ignore[union-attr]
    assert [zoned(x) for x in range(6)] == list(range(1, 7))
    names = {str(info["name"]).split("/", 1)[0] for info in platform.client.scheduler_info()["workers"].values()}
    assert names == {"zone-0", "zone-1"}
    used = {r.worker for r in zoned.invocations[-6:]}
    assert len(used) == 2


# -- local modules travel with the function -------------------------------------------------------------


def test_a_local_helpers_module_travels_to_a_worker_that_does_not_have_it(
    own_platform: Callable[..., Platform], external: ExternalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from jupyter_faas.definition.limits import Limits
    from jupyter_faas.definition.model import from_cell

    folder = tmp_path / "notebook_folder"
    folder.mkdir()
    (folder / "faas_test_helpers.py").write_text("def double(x):\n    return 2 * x\n\nFACTOR = 3\n")
    monkeypatch.syspath_prepend(str(folder))
    helpers = importlib.import_module("faas_test_helpers")
    try:
        own_platform({"faas.cluster.address": external.address})
        # The external workers run in another folder, with PYTHONPATH cleared: faas_test_helpers is not there.
        fn = FaasFunction(
            from_cell("helpers.double(x) * helpers.FACTOR", {"helpers": helpers}, Limits.resolve(), "triple", ["x"])
        )
        assert fn(7) == 42
        assert fn.invocations[-1].worker in external.worker_addresses()
    finally:
        sys.modules.pop("faas_test_helpers", None)


def test_installed_packages_and_jupyter_are_never_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import cloudpickle
    import IPython

    import jupyter_faas
    from jupyter_faas.definition.model import local_modules

    (tmp_path / "faas_local_pkg").mkdir()
    (tmp_path / "faas_local_pkg" / "__init__.py").write_text("")
    (tmp_path / "faas_local_pkg" / "tools.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = importlib.import_module("faas_local_pkg.tools")
    try:
        shipped = local_modules([tools.f, cloudpickle, IPython, jupyter_faas, json, os.path.join])
        assert [module.__name__ for module in shipped] == ["faas_local_pkg"]
    finally:
        for name in ("faas_local_pkg.tools", "faas_local_pkg"):
            sys.modules.pop(name, None)


def test_requirements_are_installed_on_an_external_cluster_before_the_first_call(
    own_platform: Callable[..., Platform], external: ExternalCluster
) -> None:
    own_platform({"faas.cluster.address": external.address})

    @function(requirements=["six>=1"])
    def uses_six(x: int) -> str:
        import six

        return six.text_type(x)

    assert uses_six(5) == "5"
    with Client(external.address, timeout="10s") as client:
        plugins = client.run_on_scheduler(
            lambda dask_scheduler: [*dask_scheduler.plugins, *dask_scheduler.worker_plugins]
        )
    assert any(name.startswith("jupyter-faas-pip-") for name in plugins)


def test_cells_of_every_runtime_answer_http_on_an_external_cluster(external: ExternalCluster, tmp_path: Path) -> None:
    # The same WebAssembly cell as tests/worker/runtimes/test_wasm.py: its build is cached, serve finds it.
    cells = [
        f"%%faas {WASM_LINE} --http\n{EDGE}",
        "%%faas greet name --lang javascript --http\nreturn `hello ${name}`;",
        '%%faas count_words text --lang bash --http\nprintf "%s" "$text" | wc -w',
        "assert edge('echo', 5)['echo'] == 5 and greet('map') == 'hello map' and count_words('a b') == '2'",
    ]
    notebook = write_notebook(tmp_path / "polyglot.ipynb", cells)
    env = {"DASK_FAAS__CLUSTER__ADDRESS": external.address, "DASK_FAAS__RUNTIMES__WASM_CACHE": str(WASM_CACHE)}
    server = start_serve(notebook, tmp_path / "state", env=env)
    try:
        signature = hmac.new(b"k", b"body", hashlib.sha256).hexdigest()
        answers = {
            "edge": server.post("edge", json={"mode": "verify", "arg": ["k", "body", signature]}, headers=AUTH),
            "greet": server.post("greet", json={"name": "http"}, headers=AUTH),
            "count_words": server.post("count_words", json={"text": "one two three"}, headers=AUTH),
        }
        assert {name: (r.status_code, r.json()) for name, r in answers.items()} == {
            "edge": (200, True),
            "greet": (200, "hello http"),
            "count_words": (200, "3"),
        }
        external_workers = external.worker_addresses()
        for name in answers:
            records = invocations_of(server, name)
            assert {r["status"] for r in records} == {"ok"} and {r["worker"] for r in records} <= external_workers
            assert Counter(r["trigger"] for r in records)["http"] == 1
        # The cell's error, over HTTP: a 500 whose error is the cell's own.
        failed = server.post("edge", json={"mode": "fail"}, headers=AUTH)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "ZeroDivisionError"
    finally:
        stop_process_group(server.process)
