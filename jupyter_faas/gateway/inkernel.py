"""A kernel's own gateway, when no Jupyter server owns its platform (VS Code, Colab, plain IPython): serve's HTTP."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import threading
from pathlib import Path

from tornado import netutil

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.gateway.keys import KeyStore
from jupyter_faas.gateway.server import HostPolicy, HttpThread, serve_http
from jupyter_faas.gateway.service import Endpoints
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry

ADDRESS = "127.0.0.1"


class KernelGateway:
    """The same paths, API, OpenAPI and metrics as `serve`, and the triggers, on 127.0.0.1 in this process.

    It lives as long as the kernel: stopped at exit. Its state (triggers, in-flight journal, dead letters) is a
    folder of its own under the state dir, removed at exit, so two plain kernels never act on each other's.
    """

    def __init__(self) -> None:
        port = _config.gateway_port()
        sockets = netutil.bind_sockets(port, address=ADDRESS)
        port = sockets[0].getsockname()[1]
        self.url = f"http://{ADDRESS}:{port}/"
        self.token = secrets.token_hex(24)
        self.state: Path = _config.state_dir() / "kernels" / str(os.getpid())
        self.registry = Registry(None)
        self.triggers = TriggerStore(self.state / "triggers")
        self.triggers.clear()
        self.endpoints = Endpoints(_platform.current(start=False), self.registry, self.state, url=self.url)
        self.endpoints.start_triggers(self.triggers)
        hosts = HostPolicy(ADDRESS, port, _config.http_allow_hosts())
        self._http = HttpThread(
            lambda stop: serve_http(sockets, self.endpoints, self.token, hosts, False, stop), on_failure=lambda: None
        )
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._http.stop()
        self.endpoints.close()
        shutil.rmtree(self.state, ignore_errors=True)


_gateway: KernelGateway | None = None
_gateway_lock = threading.Lock()


def gateway(start: bool = True) -> tuple[Registry, str, TriggerStore | None] | None:
    """Where this kernel's deploys go: its own gateway, started on first need; None if not started and not asked."""
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            if not start:
                return None
            _gateway = KernelGateway()
            atexit.register(_gateway.stop)
            # The admin token is not printed: outputs get saved and shared. Each deployed function's curl line
            # carries a key for that function only; the token stays in this process, for the owner.
            print(
                f"jupyter-faas: no Jupyter server owns this kernel's platform, so it serves its functions itself, "
                f"at {_gateway.url} while the kernel runs\n"
                f"  each function's curl line carries a key for that function only; the admin token (every function "
                f"and faas/api) is jupyter_faas.gateway.inkernel.current().token",
                file=sys.stdout,
                flush=True,
            )
        return _gateway.registry, _gateway.url, _gateway.triggers


def current() -> KernelGateway | None:
    """This kernel's own gateway, if it started one."""
    return _gateway


def stop() -> None:
    """Stop this kernel's own gateway, if it started one; the next deploy starts a new one."""
    global _gateway
    with _gateway_lock:
        running, _gateway = _gateway, None
    if running is not None:
        running.stop()


def _keys() -> KeyStore | None:
    """The function keys this kernel's gateway accepts, once it is started."""
    return None if _gateway is None else _gateway.endpoints.keys


_deploy.use_fallback(gateway, _keys)
