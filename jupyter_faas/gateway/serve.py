"""`jupyter faas serve NOTEBOOK.ipynb`: run a notebook once, then serve its functions over HTTP."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import nbformat
from jupyter_core.application import JupyterApp
from tornado import httpserver, netutil, web
from traitlets import Bool, Integer, Unicode, default

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client.function import FaasFunction
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import TriggerError
from jupyter_faas.gateway.handlers import NotFound, joined, routes
from jupyter_faas.gateway.service import Endpoints, HttpError
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry

TOKEN_ENV = "JUPYTER_FAAS_TOKEN"
SKIP_TAG = "faas-skip"
SKIP_LINE = "# faas: skip"
# Request headers up to this size are read (and get 431 past _handlers.MAX_HEADER_BYTES); more drops the connection.
MAX_CONNECTION_HEADER_BYTES = 256 * 2**10


class _ServeBase(web.RequestHandler):
    """A token in the Authorization header: `Bearer TOKEN` or `token TOKEN`."""

    def faas_guard(self, public: bool = False) -> None:
        if public and self.settings["faas_public"]:
            return
        scheme, _, given = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() not in ("bearer", "token") or not given.strip():
            raise HttpError(401, "Unauthorized", "send the token: Authorization: Bearer TOKEN")
        if not hmac.compare_digest(given.strip().encode(), self.settings["faas_token"].encode()):
            raise HttpError(403, "Forbidden", "the token is wrong")


class NotebookError(Exception):
    """A cell of the served notebook failed; the message names the cell."""


def code_cells(notebook: Any) -> list[tuple[int, str]]:
    """(cell number from 1, source) of the code cells to run: not tagged faas-skip, not starting `# faas: skip`."""
    cells = []
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code":
            continue
        source = cell.source
        first_line = source.lstrip().split("\n", 1)[0].strip().lower()
        if SKIP_TAG in cell.get("metadata", {}).get("tags", []) or first_line.replace(" ", "") == "#faas:skip":
            continue
        cells.append((number, source))
    return cells


def run_notebook(path: Path) -> dict[str, Any]:
    """Run the notebook's code cells once, top to bottom, in a fresh namespace; that namespace."""
    from IPython.core.interactiveshell import InteractiveShell

    try:
        notebook = nbformat.read(path, as_version=4)
    except (OSError, ValueError, nbformat.reader.NotJSONError) as e:
        raise NotebookError(f"cannot read {path}: {e}") from None
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_faas")
    for number, source in code_cells(notebook):
        result = shell.run_cell(source, store_history=False)
        if not result.success:
            error = result.error_in_exec or result.error_before_exec
            first = source.strip().split("\n", 1)[0][:60]
            raise NotebookError(f"cell {number} ({first!r}) failed: {type(error).__name__}: {error}")
    return shell.user_ns


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

    aliases = {"ip": "ServeApp.ip", "port": "ServeApp.port", "token": "ServeApp.token"}
    flags = {
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
            sockets = netutil.bind_sockets(self.port, address=self.ip)
        except (_config.ConfigError, OSError) as e:
            self.exit_with(f"jupyter faas serve: {e}", 2)
        port = sockets[0].getsockname()[1]
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        url = f"http://{host}:{port}/"
        registry = Registry(None)
        state = _config.state_dir() / "serve" / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        try:
            triggers = TriggerStore(state / "triggers")
        except TriggerError as e:
            self.exit_with(f"jupyter faas serve: {e}", 2)
        # The notebook is the source of truth: its run sets the triggers again. What files were handled stays.
        triggers.clear()
        _deploy.serve_here(registry, url, triggers)
        os.chdir(path.parent)  # as a kernel does: relative paths in the notebook mean its own folder
        try:
            namespace = run_notebook(path)
        except NotebookError as e:
            self.exit_with(f"jupyter faas serve: {path.name}: {e}", 1)
        for value in list(namespace.values()):
            if isinstance(value, FaasFunction):
                registry.deploy(value._definition)
        token = self.token or secrets.token_urlsafe(24)
        platform = _platform.current()
        endpoints = Endpoints(platform, registry, state, url=url)
        endpoints.start_triggers(triggers)
        self._announce(path, url, token, registry)
        # What start-up built (the notebook's namespace, parsers, grammars) lives as long as we do: moved out
        # of the collector's sight, full collections stop walking hundreds of thousands of objects mid-request.
        gc.collect()
        gc.freeze()
        try:
            asyncio.run(self._serve(sockets, endpoints, token))
        finally:
            endpoints.close()
            platform.shutdown()

    def exit_with(self, message: str, code: int) -> None:
        print(message, file=sys.stderr, flush=True)
        self.exit(code)

    def _announce(self, path: Path, url: str, token: str, registry: Registry) -> None:
        deployments = registry.deployments()
        print(f"jupyter faas serve: {len(deployments)} function(s) of {path.name} at {url}", flush=True)
        for deployment in deployments:
            print(f"  POST {url}faas/functions/{deployment.name}    {deployment.definition.describe_signature()}")
        print(f"  token: {token}    (send it as: Authorization: Bearer {token})")
        if self.public:
            print(
                "  WARNING: --public: the function endpoints answer anyone who can reach this address, "
                "without a token. The REST API still needs the token.",
                file=sys.stderr,
            )
        print(f"  API: {url}faas/api/functions, {url}faas/api/openapi.json, {url}faas/metrics", flush=True)

    async def _serve(self, sockets: list[Any], endpoints: Endpoints, token: str) -> None:
        settings = {"faas_endpoints": endpoints, "faas_token": token, "faas_public": self.public}
        app = web.Application(routes(_ServeBase, "/"), default_handler_class=joined(NotFound, _ServeBase), **settings)
        read_timeout = _config.http_read_timeout()
        server = httpserver.HTTPServer(
            app,
            # Bodies over faas.http.max-body get a 413 from the handler; this only bounds what is read at all.
            max_body_size=max(endpoints.max_body() * 4, 64 * 2**20),
            # Headers past MAX_HEADER_BYTES get a 431 from the handler; far past it, the connection is dropped.
            max_header_size=MAX_CONNECTION_HEADER_BYTES,
            # A client that dribbles its headers or its body (slowloris) is cut off; others are served meanwhile.
            idle_connection_timeout=read_timeout,
            body_timeout=read_timeout,
            xheaders=False,
        )
        server.add_sockets(sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print("jupyter faas serve: stopping", flush=True)
        server.stop()
        await server.close_all_connections()
