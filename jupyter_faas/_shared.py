"""How the kernels a Jupyter server starts find and share that server's platform."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jupyter_faas._cluster import OWNER_MAXIMUM_ENV, OWNER_SCHEDULER_ENV
from jupyter_faas._platform import Platform

# Where a kernel deploys (the server's registry folder) and the server's URL, for the endpoint it prints.
REGISTRY_ENV = "JUPYTER_FAAS_REGISTRY"
URL_ENV = "JUPYTER_FAAS_URL"
_ENV_KEYS = (OWNER_SCHEDULER_ENV, OWNER_MAXIMUM_ENV, REGISTRY_ENV, URL_ENV, "DASK_FAAS__STATE_DIR")


class Sharing:
    """While it is open, kernels started from this process use `platform`'s cluster and `registry_dir`.

    Kernels inherit this process's environment, so the scheduler's address travels there. Invocations
    go straight from a kernel to the workers; the kernel tells this platform when it has work, through a
    handler on the scheduler, so that the keep-alive never retires a worker under a kernel's invocation.
    """

    def __init__(self, platform: Platform, registry_dir: Path, url: str, state_dir: Path) -> None:
        self._platform = platform
        self._saved = {key: os.environ.get(key) for key in _ENV_KEYS}
        cluster = platform.start()._cluster
        assert cluster is not None
        environment = {REGISTRY_ENV: str(registry_dir), URL_ENV: url, "DASK_FAAS__STATE_DIR": str(state_dir)}
        self._scheduler = None
        if cluster.mode == "embedded":
            # An external cluster's address is in the config the kernels read anyway; ours is shared here.
            self._scheduler = cluster.cluster.scheduler
            self._scheduler.handlers["faas_lease"] = self._lease
            environment[OWNER_SCHEDULER_ENV] = platform.scheduler_address
            environment[OWNER_MAXIMUM_ENV] = str(platform.maximum)
        os.environ.update(environment)

    async def _lease(self, owner: str = "", busy: bool = False, wanted: int = 0) -> dict[str, Any]:
        # Off the scheduler's event loop: noting demand may ask the cluster for workers.
        return await asyncio.to_thread(self._platform.note_lease, str(owner), bool(busy), int(wanted))

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.handlers.pop("faas_lease", None)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
