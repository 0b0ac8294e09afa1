"""`jupyter faas serve NOTEBOOK.ipynb`: run a notebook, then serve its functions over HTTP (`--watch`: on each save).

Over 400 lines: the command, its Host policy, its HTTP thread and its bounded server are one feature, used only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from jupyter_core.application import JupyterApp
from tornado import httpserver, iostream, netutil, web
from traitlets import Bool, Integer, List, Unicode, default

from jupyter_faas import config as _config
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import ConfigError, TriggerError
from jupyter_faas.gateway.handlers import RETRY_AFTER, NotFound, joined, routes, settings_for
from jupyter_faas.gateway.keys import OWNER, PUBLIC, Caller, KeyStore, bearer, caller_of, keys_path

# Imported from here by tests and other commands; they live in notebook.py.
from jupyter_faas.gateway.notebook import SKIP_LINE as SKIP_LINE
from jupyter_faas.gateway.notebook import SKIP_TAG as SKIP_TAG
from jupyter_faas.gateway.notebook import NotebookError, ServedNotebook, read_cells, run_into, watch_file
from jupyter_faas.gateway.notebook import code_cells as code_cells
from jupyter_faas.gateway.notebook import run_notebook as run_notebook
from jupyter_faas.gateway.service import Endpoints, HttpError
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry

TOKEN_ENV = "JUPYTER_FAAS_TOKEN"
# Request headers up to this size are read (and get 431 past _handlers.MAX_HEADER_BYTES); more drops the connection.
MAX_CONNECTION_HEADER_BYTES = 256 * 2**10


# How long a connection refused for faas.http.max-connections is drained after its 503, so that closing it
# with the request still unread does not reset it before the answer is read; and how many drain at once.
REFUSAL_DRAIN_SECONDS = 1.0
MAX_DRAINING = 64


def _split_host(value: str) -> tuple[str, int | None] | None:
    """("name", port) of a Host header or an Origin's netloc, lowercased, IPv6 in brackets; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        if not bracket:
            return None
        name += "]"
        port_text = rest[1:] if rest.startswith(":") else (None if not rest else "")
    else:
        name, colon, port_text = value.partition(":")
        port_text = port_text if colon else None
        if ":" in (port_text or ""):
            return None
    if port_text is None:
        return (name, None) if name else None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return (name, int(port_text)) if name else None


class HostPolicy:
    """The Hosts (and so the Origins) `serve` answers to: the addresses it listens on, with its port, plus the
    names of `--allow-host` / `faas.http.allow-hosts` (NAME: any port; NAME:PORT; `*`: any Host at all).

    A browser on any web page can send a request to 127.0.0.1 (a text/plain or form POST needs no CORS
    preflight), and DNS rebinding makes a foreign name resolve to it: such requests carry a foreign Host or
    Origin, and are refused.
    """

    def __init__(self, ip: str, port: int, allowed: tuple[str, ...] = ()) -> None:
        self.port = port
        names = {_bracketed(ip)}
        if ip in ("", "0.0.0.0", "::"):
            # Listening everywhere: every address of this machine, and its own names.
            for addresses in psutil.net_if_addrs().values():
                for address in addresses:
                    if address.family in (socket.AF_INET, socket.AF_INET6):
                        names.add(_bracketed(address.address.split("%", 1)[0]))
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        if ip in ("", "0.0.0.0", "::", "localhost") or _is_loopback(ip):
            names.update({"127.0.0.1", "localhost", "[::1]"})
        self.listening = frozenset(names)
        self.any_host = "*" in allowed
        self.any_port: set[str] = set()
        self.exact: set[tuple[str, int]] = set()
        for entry in allowed:
            if entry == "*":
                continue
            split = _split_host(entry)
            if split is None:
                raise ConfigError(f"faas.http.allow-hosts / --allow-host: {entry!r} is not NAME or NAME:PORT")
            name, entry_port = split
            if entry_port is None:
                self.any_port.add(name)
            else:
                self.exact.add((name, entry_port))

    def allows(self, name: str, port: int | None, default_port: int = 80) -> bool:
        if self.any_host or name in self.any_port:
            return True
        port = default_port if port is None else port
        return (name in self.listening and port == self.port) or (name, port) in self.exact

    def host_allowed(self, host: str | None) -> bool:
        if host is None:
            return True  # not a browser: every browser sends a Host
        split = _split_host(host)
        return split is not None and self.allows(*split)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser's cross-origin request: browsers send Origin with every POST
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file: pages) and the like
        if host is not None and parts.netloc == host.strip().lower():
            return True  # same origin; the Host itself was checked
        split = _split_host(parts.netloc)
        return split is not None and self.allows(*split, default_port=443 if parts.scheme == "https" else 80)


def _bracketed(ip: str) -> str:
    return f"[{ip.lower()}]" if ":" in ip else ip.lower()


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class _ServeBase(web.RequestHandler):
    """A known Host and Origin, then a token in the Authorization header: `Bearer TOKEN` or `token TOKEN`.

    The server's token is the owner's; a function key (`fk_...`) reaches only its functions.
    """

    def faas_admit(self) -> None:
        policy: HostPolicy = self.settings["faas_hosts"]
        host = self.request.headers.get("Host")
        if not policy.host_allowed(host):
            raise HttpError(
                403,
                "HostNotAllowed",
                f"this server does not answer to the Host {(host or '')[:100]!r}; "
                "start it with --allow-host NAME (or set faas.http.allow-hosts) to serve that name",
            )
        # A preflight runs nothing, and gets 405 without allow headers: serve answers no CORS at all.
        origin = None if self.request.method == "OPTIONS" else self.request.headers.get("Origin")
        if not policy.origin_allowed(origin, host):
            raise HttpError(403, "OriginNotAllowed", "requests from the web pages of other origins are refused")

    def faas_guard(self, public: bool = False) -> Caller:
        given = bearer(self.request.headers.get("Authorization", ""))
        if given is not None and hmac.compare_digest(given.encode(), self.settings["faas_token"].encode()):
            return OWNER
        caller = None if given is None else caller_of(self.settings["faas_endpoints"].keys, given)
        if caller is not None:
            return caller
        if public and self.settings["faas_public"]:
            return PUBLIC
        if given is None:
            raise HttpError(401, "Unauthorized", "send the token: Authorization: Bearer TOKEN")
        raise HttpError(403, "Forbidden", "the token is wrong, or the function key was revoked")


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
        token = self.token or secrets.token_urlsafe(24)
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


async def serve_http(
    sockets: list[Any], endpoints: Endpoints, token: str, hosts: HostPolicy, public: bool, stop: asyncio.Event
) -> None:
    """Serve the function endpoints and the REST API on `sockets` until `stop` is set: serve's and a kernel's."""
    settings = {**settings_for(endpoints), "faas_token": token, "faas_public": public, "faas_hosts": hosts}
    app = web.Application(routes(_ServeBase, "/"), default_handler_class=joined(NotFound, _ServeBase), **settings)
    read_timeout = _config.http_read_timeout()
    server = _BoundedServer(
        app,
        max_connections=_config.http_max_connections(),
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
    await stop.wait()
    server.stop()
    await server.close_all_connections()


class HttpThread:
    """An HTTP server on a thread and event loop of its own: it answers while the main thread runs the notebook (or
    a kernel its cells)."""

    def __init__(
        self, serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]], on_failure: Callable[[], None]
    ) -> None:
        self._serve = serve
        self._on_failure = on_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faas-http", daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:  # nothing answers any more: say so
            print(f"jupyter-faas: the HTTP server failed: {e!r}", file=sys.stderr, flush=True)
            self._on_failure()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        await self._serve(self._stop)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=30)


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "error": {
                "type": "Busy",
                "message": "the server has as many connections open as it keeps (faas.http.max-connections); "
                "try again shortly",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"X-Request-Id: {uuid.uuid4().hex}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _BoundedServer(httpserver.HTTPServer):
    """At most `max_connections` open at once (`faas.http.max-connections`): past it, a connection is answered
    503 with Retry-After and closed at once, before anything of its request is read."""

    def initialize(self, *args: Any, max_connections: int, **kwargs: Any) -> None:  # type: ignore[override]
        # HTTPServer is a tornado Configurable: its constructor's arguments go to initialize().
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.open_connections = 0
        self._draining = 0
        self._refusals: set[asyncio.Task[None]] = set()

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.open_connections >= self.max_connections:
            task = asyncio.ensure_future(self._refuse(stream))
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    async def _refuse(self, stream: iostream.IOStream) -> None:
        with contextlib.suppress(iostream.StreamClosedError, OSError):
            await stream.write(_busy_answer())
            if self._draining < MAX_DRAINING:
                self._draining += 1
                try:
                    # Half-close, then read and drop what the client still sends, so that the close does not
                    # reset the connection (and lose the answer) while its request is unread.
                    stream.socket.shutdown(socket.SHUT_WR)
                    deadline = asyncio.get_running_loop().time() + REFUSAL_DRAIN_SECONDS
                    while True:
                        remaining = deadline - asyncio.get_running_loop().time()
                        if remaining <= 0:
                            break
                        await asyncio.wait_for(stream.read_bytes(65536, partial=True), remaining)
                except (asyncio.TimeoutError, iostream.StreamClosedError, OSError):
                    pass
                finally:
                    self._draining -= 1
        stream.close()
