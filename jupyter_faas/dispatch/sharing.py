"""How the kernels a Jupyter server starts find and share that server's platform."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_faas.dispatch.cluster import OWNER_MAXIMUM_ENV, OWNER_SCHEDULER_ENV
from jupyter_faas.dispatch.platform import Platform

# Where a kernel deploys (the server's registry folder) and the server's URL, for the endpoint it prints.
REGISTRY_ENV = "JUPYTER_FAAS_REGISTRY"
URL_ENV = "JUPYTER_FAAS_URL"
# Where a kernel sets triggers: the server's trigger folder.
TRIGGERS_ENV = "JUPYTER_FAAS_TRIGGERS"
# How often to look for kernels that died without unregistering, and how long their client must be gone.
PRUNE_INTERVAL = 30.0
PRUNE_GRACE = 60.0
_ENV_KEYS = (OWNER_SCHEDULER_ENV, OWNER_MAXIMUM_ENV, REGISTRY_ENV, URL_ENV, TRIGGERS_ENV, "DASK_FAAS__STATE_DIR")


class Sharing:
    """While it is open, kernels started from this process use `platform`'s cluster and `registry_dir`.

    Kernels inherit this process's environment, so the scheduler's address travels there. Invocations
    go straight from a kernel to the workers; the kernel tells this platform when it has work, through a
    handler on the scheduler, so that the keep-alive never retires a worker under a kernel's invocation.
    """

    def __init__(self, platform: Platform, registry_dir: Path, url: str, state_dir: Path) -> None:
        self._platform = platform
        self._saved = {key: os.environ.get(key) for key in _ENV_KEYS}
        # Each kernel's plugin name (its token), with the id of its Dask client.
        self._clients: dict[str, str] = {}
        self._stop = threading.Event()
        cluster = platform.start()._cluster
        assert cluster is not None
        environment = {
            REGISTRY_ENV: str(registry_dir),
            URL_ENV: url,
            TRIGGERS_ENV: str(state_dir / "triggers"),
            "DASK_FAAS__STATE_DIR": str(state_dir),
        }
        self._scheduler = None
        if cluster.mode == "embedded":
            # An external cluster's address is in the config the kernels read anyway; ours is shared here.
            self._scheduler = cluster.own_cluster().scheduler
            self._scheduler.handlers["faas_lease"] = self._lease
            self._loop = cluster.own_cluster().loop.asyncio_loop
            threading.Thread(target=self._prune, name="faas-prune", daemon=True).start()
            environment[OWNER_SCHEDULER_ENV] = platform.scheduler_address
            environment[OWNER_MAXIMUM_ENV] = str(platform.maximum)
        os.environ.update(environment)

    async def _lease(self, owner: str = "", busy: bool = False, wanted: int = 0, client: str = "") -> dict[str, Any]:
        if owner and client:
            self._clients[str(owner)] = str(client)
        # Off the scheduler's event loop: noting demand may ask the cluster for workers.
        return await asyncio.to_thread(self._platform.note_lease, str(owner), bool(busy), int(wanted))

    def _prune(self) -> None:
        """Take back the sandboxes of kernels that died without saying so (a kernel killed with SIGKILL).

        A kernel registers a worker plugin, named by its token, and removes it when it shuts down. One
        killed cannot, and every worker would keep starting sandboxes for it. Its Dask client leaves the
        scheduler when it dies: once gone for PRUNE_GRACE, its plugin is unregistered.
        """
        missing_since: dict[str, float] = {}
        while not self._stop.wait(PRUNE_INTERVAL):
            scheduler = self._scheduler
            if scheduler is None:
                return
            connected = set(scheduler.clients)
            now = time.monotonic()
            for owner, client in list(self._clients.items()):
                if client in connected:
                    missing_since.pop(owner, None)
                    continue
                if now - missing_since.setdefault(owner, now) < PRUNE_GRACE:
                    continue
                del self._clients[owner]
                missing_since.pop(owner, None)
                if owner in scheduler.worker_plugins:
                    removal = scheduler.unregister_worker_plugin(comm=None, name=owner)
                    with contextlib.suppress(Exception):  # the cluster is closing: nothing left to clean
                        asyncio.run_coroutine_threadsafe(removal, self._loop).result(timeout=30)

    def close(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.handlers.pop("faas_lease", None)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
