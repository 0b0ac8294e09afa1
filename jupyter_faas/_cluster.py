"""Getting a Dask cluster to run on: the embedded elastic one, an existing scheduler, or a factory."""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import time
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from jupyter_faas import _config
from jupyter_faas._invoker import SandboxPlugin

# Imported once in the fork server, so each new worker starts with them already loaded.
_WORKER_PRELOAD = ["distributed", "cloudpickle", "psutil", "jupyter_faas._invoker"]


class ClusterHandle:
    """A connected client, and how the platform may scale the cluster behind it."""

    def __init__(self, mode: str, client: Client, cluster: Any | None, maximum: int) -> None:
        self.mode = mode  # "embedded", "address" or "factory"
        self.client = client
        self.cluster = cluster
        self.maximum = maximum

    @property
    def scales_on_demand(self) -> bool:
        """Whether the platform itself scales up on submit and down on keep-alive expiry."""
        return self.mode == "embedded"

    def worker_count(self) -> int:
        if self.mode == "embedded":
            # SpecCluster keeps this current from the scheduler, without a round trip.
            return len(self.cluster.scheduler_info.get("workers", {}))
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def scale(self, n: int) -> None:
        self.cluster.scale(n)

    def wait_for_workers(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker_count() == n:
                return True
            time.sleep(0.02)
        return False

    @property
    def scheduler_address(self) -> str:
        return self.client.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:
            return None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None and self.mode != "address":
                self.cluster.close()


def _embedded(maximum: int) -> ClusterHandle:
    method = _config.start_method()
    # Read by each Nanny at every worker start, so it must outlive this function.
    dask.config.set({"distributed.worker.multiprocessing-method": method})
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(_WORKER_PRELOAD)
    cluster = LocalCluster(
        n_workers=0,
        threads_per_worker=_config.slots_per_worker(),
        memory_limit=_config.worker_memory(),
        processes=True,
        host="127.0.0.1",
        dashboard_address=_config.dashboard_address(),
        # Retries are the platform's to decide: a lost worker must not silently rerun an invocation.
        scheduler_kwargs={"allowed_failures": 0},
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    return ClusterHandle("embedded", client, cluster, maximum)


def _from_factory(spec: _config.FactorySpec, maximum: int) -> ClusterHandle:
    try:
        module = importlib.import_module(spec.module)
        cluster_class = getattr(module, spec.class_name)
    except (ImportError, AttributeError) as e:
        raise _config.ConfigError(f"faas.cluster.factory: cannot import {spec.module}.{spec.class_name}: {e}") from None
    cluster = cluster_class(**spec.kwargs)
    if not hasattr(cluster, "adapt"):
        cluster.close()
        raise _config.ConfigError(f"faas.cluster.factory: {spec.class_name} has no adapt(); it cannot scale")
    idle = _config.idle_timeout()
    interval = min(1.0, idle / 2)
    cluster.adapt(minimum=0, maximum=maximum, interval=f"{interval}s", wait_count=max(1, math.ceil(idle / interval)))
    client = Client(cluster, set_as_default=False)
    return ClusterHandle("factory", client, cluster, maximum)


def connect() -> ClusterHandle:
    """The cluster the config asks for; a bad config value fails here with its key named."""
    _config.validate_all()
    maximum = _config.maximum_workers()
    address = _config.cluster_address()
    factory = _config.cluster_factory()
    if address and factory:
        raise _config.ConfigError("set only one of faas.cluster.address and faas.cluster.factory")
    if address:
        try:
            client = Client(address, set_as_default=False, timeout="10s")
        except OSError as e:
            raise _config.ConfigError(f"faas.cluster.address: cannot reach the scheduler at {address}: {e}") from None
        handle = ClusterHandle("address", client, None, maximum)
    elif factory:
        handle = _from_factory(factory, maximum)
    else:
        handle = _embedded(maximum)
    handle.client.register_plugin(SandboxPlugin())
    return handle
