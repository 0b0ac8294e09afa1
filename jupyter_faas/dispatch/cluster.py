"""Getting a Dask cluster to run on: the embedded elastic one, an existing scheduler, or a factory."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import threading
import time
from typing import Any, Protocol

import dask.config
from distributed import Adaptive, Client, LocalCluster, Nanny
from distributed.core import PooledRPCCall, rpc

from jupyter_faas import config as _config
from jupyter_faas.dispatch import versions as _versions
from jupyter_faas.errors import ConfigError, FaasError
from jupyter_faas.worker.plugin import SandboxPlugin

# Set by the server extension for the kernels its server starts: its scheduler, and its maximum.
OWNER_SCHEDULER_ENV = "JUPYTER_FAAS_SCHEDULER"
OWNER_MAXIMUM_ENV = "JUPYTER_FAAS_MAXIMUM"

# How long shutting down waits for workers to take the platform's token back.
_UNREGISTER_WAIT = 5.0


class ScalingHooks(Protocol):
    """What the platform tells a cluster's autoscaler: the scheduler never sees its invocations as tasks."""

    def demand(self) -> int:
        """Workers the platform wants now; 0 once the keep-alive has passed with nothing in flight."""
        ...

    def begin_retire(self) -> bool:
        """Hold new invocations while workers retire; False if work is in flight and nothing may retire."""
        ...

    def end_retire(self) -> None:
        """Release the invocations held during retirement."""
        ...


class _DemandAdaptive(Adaptive):
    """Dask's Adaptive, also counting the platform's demand, and never retiring workers under live work."""

    def __init__(self, cluster: Any = None, *, hooks: ScalingHooks, **kwargs: Any) -> None:
        super().__init__(cluster=cluster, **kwargs)
        self._hooks = hooks

    async def target(self) -> int:
        dask_target: int = await super().target()  # type: ignore[no-untyped-call]  # unannotated in distributed
        return max(dask_target, self._hooks.demand())

    async def scale_down(self, workers: Any) -> None:
        if not workers or not self._hooks.begin_retire():
            return
        try:
            await super().scale_down(workers)
        finally:
            self._hooks.end_retire()


class ClusterHandle:
    """A connected client, and how the platform may scale the cluster behind it."""

    def __init__(self, mode: str, client: Client, cluster: Any | None, maximum: int) -> None:
        # "embedded", "address", "factory", or "server": the cluster of the Jupyter server that started us.
        self.mode = mode
        self.client = client
        self.cluster = cluster
        self.maximum = maximum
        self.plugin_name: str | None = None

    @property
    def scales_on_demand(self) -> bool:
        """Whether the platform asks for workers on submit (it does not on a cluster it only connects to)."""
        return self.mode in ("embedded", "factory", "server")

    @property
    def shares_owner_cluster(self) -> bool:
        """Whether another platform (our Jupyter server's) scales this cluster, on what we tell it."""
        return self.mode == "server"

    def lease(self, busy: bool, wanted: int, wait: bool) -> dict[str, Any]:
        """Tell the owning server's platform about our work (see jupyter_faas.dispatch.sharing)."""
        owner = self.plugin_name or ""

        scheduler = self._scheduler()

        async def send() -> Any:
            return await scheduler.faas_lease(owner=owner, busy=busy, wanted=wanted, client=self.client.id)

        if wait:
            answer: dict[str, Any] = self.client.sync(send)  # type: ignore[no-untyped-call]  # unannotated
            return answer
        loop = self.client.loop
        if loop is None:
            raise FaasError("the Dask client has no event loop: it is closed")
        loop.add_callback(send)
        return {}

    def _scheduler(self) -> rpc | PooledRPCCall:
        """The client's connection to the scheduler; it has none once closed."""
        scheduler = self.client.scheduler
        if scheduler is None:
            raise FaasError("the Dask client is not connected to a scheduler")
        return scheduler

    def own_cluster(self) -> Any:
        """The cluster object behind the client (embedded, factory); a scheduler address alone has none.

        Any: the embedded LocalCluster, or whatever class faas.cluster.factory names.
        """
        if self.cluster is None:
            raise FaasError(f"a cluster reached by {self.mode} has no cluster object here")
        return self.cluster

    @property
    def retires_when_idle(self) -> bool:
        """Whether the platform itself retires every worker when the keep-alive expires."""
        return self.mode == "embedded"

    def worker_info(self) -> dict[str, tuple[int, str | None]]:
        """Each connected worker's address, with the threads (slots) it runs and its zone, if it has one."""
        if self.mode == "embedded" and self.cluster is not None:
            # SpecCluster keeps this current from the scheduler, without a round trip.
            workers = self.cluster.scheduler_info.get("workers", {})
        else:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return {address: (int(info.get("nthreads", 1)), zone_of(info)) for address, info in dict(workers).items()}

    def worker_slots(self) -> dict[str, int]:
        """Each connected worker's address, with the number of threads (slots) it runs."""
        return {address: slots for address, (slots, _) in self.worker_info().items()}

    def worker_count(self) -> int:
        return len(self.worker_slots())

    def scale(self, n: int) -> None:
        """Ask for n workers now: directly on the embedded cluster, through an adaptive round on a factory's."""
        if self.mode == "embedded":
            self.own_cluster().scale(n)
        elif self.mode == "server":
            self.lease(True, n, wait=False)
        elif self.mode == "factory":
            adaptive = getattr(self.cluster, "_adaptive", None)
            if adaptive is not None:
                self.own_cluster().loop.add_callback(adaptive.adapt)

    def has_dask_work(self) -> bool:
        """Tasks submitted through the Dask client itself: the keep-alive must not retire workers under them."""
        scheduler = getattr(self.cluster, "scheduler", None)
        return bool(scheduler is not None and scheduler.tasks)

    def wait_for_workers(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker_count() == n:
                return True
            time.sleep(0.02)
        return False

    @property
    def scheduler_address(self) -> str:
        return str(self._scheduler().address)

    @property
    def dashboard_link(self) -> str | None:
        try:
            link: str = self.client.dashboard_link
            return link
        except Exception:
            return None

    def _unregister_plugin(self) -> None:
        with contextlib.suppress(Exception):  # the client closing under it ends this call with an error
            self.client.unregister_worker_plugin(self.plugin_name)  # type: ignore[no-untyped-call]  # unannotated

    def close(self) -> None:
        try:
            if self.mode in ("address", "server") and self.plugin_name:
                # A shared cluster outlives this platform: take our token back off its workers. A broken
                # worker may never answer, and shutting down must not wait on it for more than a moment.
                unregister = threading.Thread(target=self._unregister_plugin, name="faas-unregister", daemon=True)
                unregister.start()
                unregister.join(_UNREGISTER_WAIT)
            self.client.close()  # type: ignore[no-untyped-call]  # unannotated in distributed
        finally:
            if self.cluster is not None and self.mode not in ("address", "server"):
                self.cluster.close()


def zone_of(info: dict[str, Any]) -> str | None:
    """A worker's zone: a resource named zone-X (`dask worker --resources zone-X=1`), or its name's prefix
    before a slash (`dask worker --name X/0`); None for a worker without one."""
    resources: dict[str, Any] = info.get("resources") or {}
    for resource in resources:
        if resource.startswith(("zone-", "zone_")) and len(resource) > 5:
            return resource[5:]
    name = str(info.get("name", ""))
    return name.split("/", 1)[0] if "/" in name else None


class _ZonedLocalCluster(LocalCluster):
    """The embedded cluster, its workers named zone-0/N, zone-1/N, ... in turn: zones simulated on one machine."""

    def __init__(self, *args: Any, zones: int, **kwargs: Any) -> None:
        self._zones = zones
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # LocalCluster is unannotated

    def _new_worker_name(self, worker_number: int) -> str:
        return f"zone-{worker_number % self._zones}/{worker_number}"


def _nanny_starting_with(method: str) -> type[Nanny]:
    """A Nanny that starts its worker process by `method`, leaving the process-wide setting alone."""

    class FaasNanny(Nanny):
        async def instantiate(self) -> Any:
            # distributed reads this key as the worker process starts; scope it to our own workers.
            with dask.config.set({"distributed.worker.multiprocessing-method": method}):
                return await super().instantiate()

    return FaasNanny


def _embedded(maximum: int) -> ClusterHandle:
    zones = _config.simulated_zones()
    cluster_class: Any = LocalCluster if zones == 1 else functools.partial(_ZonedLocalCluster, zones=zones)
    cluster = cluster_class(
        worker_class=_nanny_starting_with(_config.start_method()),
        n_workers=0,
        threads_per_worker=_config.slots_per_worker(),
        memory_limit=_config.worker_memory(),
        processes=True,
        host="127.0.0.1",
        dashboard_address=_config.dashboard_address(),
        silence_logs=logging.ERROR,
        preload=["jupyter_faas.worker.embedded"],
    )
    client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]  # Client() is unannotated
    return ClusterHandle("embedded", client, cluster, maximum)


def _from_factory(spec: _config.FactorySpec, maximum: int, hooks: ScalingHooks) -> ClusterHandle:
    try:
        module = importlib.import_module(spec.module)
        cluster_class = getattr(module, spec.class_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"faas.cluster.factory: cannot import {spec.module}.{spec.class_name}: {e}") from None
    cluster = cluster_class(**spec.kwargs)
    if not hasattr(cluster, "adapt"):
        cluster.close()
        raise ConfigError(f"faas.cluster.factory: {spec.class_name} has no adapt(); it cannot scale")
    # The keep-alive lives in hooks.demand(), so one adaptive round below it is enough to scale down.
    interval = min(1.0, _config.idle_timeout() / 2)
    cluster.adapt(
        Adaptive=_DemandAdaptive, hooks=hooks, minimum=0, maximum=maximum, interval=f"{interval}s", wait_count=1
    )
    client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]  # Client() is unannotated
    return ClusterHandle("factory", client, cluster, maximum)


def connect(token: str, hooks: ScalingHooks) -> ClusterHandle:
    """The cluster the config asks for; a bad config value fails here with its key named.

    Its workers start invocation streams that only accept clients holding `token`.
    """
    _config.validate_all()
    maximum = _config.maximum_workers()
    address = _config.cluster_address()
    factory = _config.cluster_factory()
    if address and factory:
        raise ConfigError("set only one of faas.cluster.address and faas.cluster.factory")
    owner = os.environ.get(OWNER_SCHEDULER_ENV) if _config.share_server() else None
    connect_timeout = _config.connect_timeout()
    if address:
        try:
            client = Client(address, set_as_default=False, timeout=connect_timeout)  # type: ignore[no-untyped-call]  # Client() is unannotated
        except OSError as e:
            raise ConfigError(f"faas.cluster.address: cannot reach the scheduler at {address}: {e}") from None
        handle = ClusterHandle("address", client, None, maximum)
    elif owner and not factory:
        try:
            client = Client(owner, set_as_default=False, timeout=connect_timeout)  # type: ignore[no-untyped-call]  # Client() is unannotated
        except OSError as e:
            raise FaasError(
                f"cannot reach the cluster of the Jupyter server that started this kernel ({owner}): {e}. "
                "Restart the server, or set faas.cluster.share-server: false to run an embedded cluster."
            ) from None
        handle = ClusterHandle("server", client, None, int(os.environ.get(OWNER_MAXIMUM_ENV) or maximum))
    elif factory:
        handle = _from_factory(factory, maximum, hooks)
    else:
        handle = _embedded(maximum)
    if handle.mode != "embedded":
        # Before anything is pickled across: a mismatch would otherwise surface as an opaque traceback.
        try:
            _versions.check(handle.client)
        except BaseException:
            handle.close()
            raise
    plugin = SandboxPlugin(token)
    try:
        handle.client.register_plugin(plugin, name=plugin.name)
    except Exception as e:
        handle.close()
        raise FaasError(
            f"the cluster's workers cannot start jupyter-faas ({type(e).__name__}: {e}). "
            f"Install it on every worker: pip install jupyter-faas=={_version()}"
        ) from None
    handle.plugin_name = plugin.name
    return handle


def _version() -> str:
    from jupyter_faas import __version__

    return __version__
