"""`jupyter faas serve NOTEBOOK.ipynb`: run a notebook, then serve its functions over HTTP (`--watch`: on each save)."""

from __future__ import annotations

import gc
import hashlib
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from jupyter_core.application import JupyterApp
from tornado import netutil
from traitlets import Bool, Integer, List, Unicode, default

from jupyter_faas import config as _config
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import ConfigError, TriggerError
from jupyter_faas.gateway.keys import KeyStore, keys_path

# Imported from here by tests and other commands; they live in notebook.py.
from jupyter_faas.gateway.notebook import SKIP_LINE as SKIP_LINE
from jupyter_faas.gateway.notebook import SKIP_TAG as SKIP_TAG
from jupyter_faas.gateway.notebook import NotebookError, ServedNotebook, read_cells, run_into, watch_file
from jupyter_faas.gateway.notebook import code_cells as code_cells
from jupyter_faas.gateway.notebook import run_notebook as run_notebook
from jupyter_faas.gateway.server import HostPolicy, HttpThread, serve_http
from jupyter_faas.gateway.service import Endpoints
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry

TOKEN_ENV = "JUPYTER_FAAS_TOKEN"


def serve_state(path: Path) -> Path:
    """The state folder of `serve` for this notebook: its triggers, function keys, dead letters."""
    return _config.state_dir() / "serve" / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


class ServeApp(JupyterApp):
    """Serve every %%faas function of a notebook at POST /faas/functions/NAME, with the REST API beside it."""

    name = "jupyter-faas-serve"
    description = (
        "Run a notebook's code cells once, top to bottom, then serve each of its %%faas functions as an "
        "HTTP endpoint on an elastic Dask cluster that scales to zero."
    )
    examples = "jupyter faas serve notebook.ipynb --port 8765 --token s3cret"

    ip = Unicode("127.0.0.1", config=True, help="The address to listen on.")
    port = Integer(8765, config=True, help="The port to listen on; 0 picks a free one.")
    token = Unicode(config=True, help=f"The token requests must send (also ${TOKEN_ENV}); one is made if unset.")
    public = Bool(False, config=True, help="No token for the function endpoints (the REST API still needs it).")
    watch = Bool(
        False,
        config=True,
        help="Run the notebook again whenever it is saved; a run that fails keeps the previous versions serving.",
    )
    allow_host = List(
        Unicode(),
        config=True,
        help="A Host name to answer to besides the listening address (repeatable): NAME, NAME:PORT, or *.",
    )

    aliases = {
        "ip": "ServeApp.ip",
        "port": "ServeApp.port",
        "token": "ServeApp.token",
        "allow-host": "ServeApp.allow_host",
    }
    flags = {
        "watch": (
            {"ServeApp": {"watch": True}},
            "Run the notebook again whenever it is saved, switching each function to its new version.",
        ),
        "public": (
            {"ServeApp": {"public": True}},
            "Serve the function endpoints without a token (a warning is printed).",
        ),
    }

    @default("token")
    def _token_default(self) -> str:
        return os.environ.get(TOKEN_ENV, "")

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.exit_with("jupyter faas serve: give exactly one notebook, e.g. jupyter faas serve notebook.ipynb", 2)
        path = Path(self.extra_args[0]).resolve()
        if not path.is_file():
            self.exit_with(f"jupyter faas serve: no notebook at {path}", 2)
        try:
            _config.validate_all()
            allowed = (*_config.http_allow_hosts(), *self.allow_host)
            HostPolicy(self.ip, self.port, allowed)  # a bad --allow-host fails before anything starts
            sockets = netutil.bind_sockets(self.port, address=self.ip)
        except (ConfigError, OSError) as e:
            self.exit_with(f"jupyter faas serve: {e}", 2)
        port = sockets[0].getsockname()[1]
        self._hosts = HostPolicy(self.ip, port, allowed)
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        url = f"http://{host}:{port}/"
        registry = Registry(None)
        state = serve_state(path)
        try:
            triggers = TriggerStore(state / "triggers")
        except TriggerError as e:
            self.exit_with(f"jupyter faas serve: {e}", 2)
        # The notebook is the source of truth: its run sets the triggers again. What files were handled stays.
        triggers.clear()
        os.chdir(path.parent)  # as a kernel does: relative paths in the notebook mean its own folder
        # Hex, as Jupyter's own: a token that began with '-' could not be passed back as --token VALUE.
        token = self.token or secrets.token_hex(24)
        platform = _platform.current(start=False)
        endpoints = Endpoints(platform, registry, state, url=url, starting=True)
        # Answering from now on, while the notebook runs: health says "starting" (503) until all is set.
        http = HttpThread(
            lambda stop: serve_http(sockets, endpoints, token, self._hosts, self.public, stop),
            on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM),  # serve without HTTP is no use: stop it
        )
        print(f"jupyter faas serve: running {path.name}; answering at {url} (health: starting)", flush=True)
        try:
            try:
                cells = read_cells(path)
                run_into(path, registry, url, triggers, keys=KeyStore(keys_path(state)))
            except NotebookError as e:
                self.exit_with(f"jupyter faas serve: {path.name}: {e}", 1)
            platform.start()  # ready means the cluster is up too, also for a notebook that never calls a function
            endpoints.start_triggers(triggers)
            endpoints.mark_ready()
            self._announce(path, url, token, registry)
            # What start-up built (the notebook's namespace, parsers, grammars) lives as long as we do: moved out
            # of the collector's sight, full collections stop walking hundreds of thousands of objects mid-request.
            gc.collect()
            gc.freeze()
            served = ServedNotebook(path, url, registry, triggers, state, cells, endpoints.refresh_triggers)
            self._run_until_stopped(served)
        finally:
            http.stop()
            endpoints.close()
            platform.shutdown()

    def _run_until_stopped(self, served: ServedNotebook) -> None:
        """Until SIGINT or SIGTERM; with --watch, run the notebook again each time its code cells change."""
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        changed = threading.Event()
        if self.watch:
            watcher = threading.Thread(
                target=watch_file, args=(served.path, changed, stop), name="faas-watch-notebook", daemon=True
            )
            watcher.start()
            print(f"jupyter faas serve: watching {served.path.name}: saving it runs it again", flush=True)
        while not stop.is_set():
            if changed.wait(0.2):
                changed.clear()
                served.reload()
        print("jupyter faas serve: stopping", flush=True)

    def exit_with(self, message: str, code: int) -> None:
        print(message, file=sys.stderr, flush=True)
        self.exit(code)

    def _announce(self, path: Path, url: str, token: str, registry: Registry) -> None:
        deployments = registry.deployments()
        print(f"jupyter faas serve: {len(deployments)} function(s) of {path.name} at {url}", flush=True)
        for deployment in deployments:
            print(f"  POST {url}faas/functions/{deployment.name}    {deployment.definition.describe_signature()}")
        print(f"  token: {token}    (send it as: Authorization: Bearer {token})")
        print(f"  a key for one function only: jupyter faas keys create NAME --notebook {path}")
        if self.public:
            print(
                "  WARNING: --public: the function endpoints answer anyone who can reach this address, "
                "without a token. The REST API still needs the token.",
                file=sys.stderr,
            )
        print(f"  API: {url}faas/api/functions, {url}faas/api/openapi.json, {url}faas/metrics", flush=True)
