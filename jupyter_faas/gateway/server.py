"""The HTTP server of `serve` and of a kernel: its Host policy, token check, thread and bounded connections."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import psutil
from tornado import httpserver, iostream, web

from jupyter_faas import config as _config
from jupyter_faas.errors import ConfigError
from jupyter_faas.gateway.handlers import RETRY_AFTER, NotFound, joined, routes, settings_for
from jupyter_faas.gateway.keys import OWNER, PUBLIC, Caller, bearer, caller_of
from jupyter_faas.gateway.service import Endpoints, HttpError

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
