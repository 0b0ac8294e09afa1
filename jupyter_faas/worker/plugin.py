"""The worker side: the stream that feeds a worker's sandboxes, started and stopped with the worker by a plugin."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psutil
from distributed import WorkerPlugin

from jupyter_faas.worker import wire as _wire
from jupyter_faas.worker.capture import Segments
from jupyter_faas.worker.messages import (
    Answer,
    Answers,
    ChildCall,
    Done,
    Hello,
    Missing,
    Output,
    Package,
    Run,
    RunExtras,
    SandboxCall,
    StreamEvent,
    ToWorker,
)
from jupyter_faas.worker.pool import NO_RESULT_LIMIT, Batch, Invoker, Upstream

# Answers are sent back in frames at most this far apart, so a lost worker loses little.
_FLUSH_INTERVAL = 0.01
# Function packages a worker keeps for its sandboxes; the oldest are dropped first.
_PACKAGES_KEPT = 256

# An invocation stream peer that has not sent its token by then is dropped: a handshake is one small frame.
HANDSHAKE_TIMEOUT = 10.0
# Streams held at once, and of them still in their handshake: past these a new connection is closed at once.
MAX_CONNECTIONS = 512
MAX_HANDSHAKES = 64
TOKEN_LENGTH = 32
# Scheduler metadata: worker address -> [host, port] of its invocation stream.
ENDPOINTS_KEY = "jupyter-faas-endpoints"


class InvokerServer:
    """A worker's invocation stream: clients that hold a token send batches, answers stream back.

    Each platform using the worker registers its own token, so notebooks sharing a cluster do not
    lock each other out.
    """

    def __init__(
        self,
        invoker: Invoker,
        host: str,
        worker_started: float,
        handshake_timeout: float | None = None,
        max_connections: int | None = None,
        max_handshakes: int | None = None,
    ) -> None:
        self.invoker = invoker
        self.tokens: set[bytes] = set()
        self._worker_started = worker_started
        self._handshake_timeout = HANDSHAKE_TIMEOUT if handshake_timeout is None else handshake_timeout
        self._max_connections = MAX_CONNECTIONS if max_connections is None else max_connections
        self._max_handshakes = MAX_HANDSHAKES if max_handshakes is None else max_handshakes
        self._packages: OrderedDict[str, Package] = OrderedDict()
        self._packages_lock = threading.Lock()
        self._listener = socket.create_server((host, 0))
        self.endpoint = (host, self._listener.getsockname()[1])
        self._connections: set[socket.socket] = set()
        self._handshaking = 0
        self._count_lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="faas-invoker-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            # Counted here, before a thread exists: connections that never send a token cannot pile up threads.
            with self._count_lock:
                admitted = len(self._connections) < self._max_connections and self._handshaking < self._max_handshakes
                if admitted:
                    self._connections.add(sock)
                    self._handshaking += 1
            if not admitted:
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock,), name="faas-invoker", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        handshaking = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Nothing is unpickled before the peer proves it holds the token, and it has only so long to.
            sock.settimeout(self._handshake_timeout)
            offered = _wire.receive_token(sock, TOKEN_LENGTH)
            if not any(hmac.compare_digest(offered, token) for token in list(self.tokens)):
                return
            sock.settimeout(None)
            with self._count_lock:
                self._handshaking -= 1
                handshaking = False
            hello: Hello = ("hello", self._worker_started, self.invoker.slots)
            _wire.send(sock, hello)
            while not self._closed:
                request: Run | ToWorker = _wire.receive(sock)
                if request[0] != "run":
                    continue  # a reply or a stop for an invocation that has already ended
                self._handle(sock, request)
        except (OSError, _wire.ConnectionLost, EOFError):
            pass
        finally:
            with self._count_lock:
                self._connections.discard(sock)
                if handshaking:
                    self._handshaking -= 1
            sock.close()

    def _handle(self, sock: socket.socket, request: Run) -> None:
        _, name, version, package, blob, indices, timeout, memory, max_output, secrets = request[:10]
        # Clients of before --isolation send no eleventh item, nor those of before faas.call.max-bytes a twelfth.
        isolation = request[10] if len(request) > 10 else "warm"
        max_result = request[11] if len(request) > 11 else NO_RESULT_LIMIT
        with self._packages_lock:
            if package is not None:
                self._packages[version] = package
                while len(self._packages) > _PACKAGES_KEPT:
                    self._packages.popitem(last=False)
            package = self._packages.get(version)
            if package is not None:
                self._packages.move_to_end(version)
        if package is None:
            missing: Missing = ("missing",)
            _wire.send(sock, missing)
            return
        pending: list[tuple[int, Answer]] = []
        last_flush = time.monotonic()

        def on_answer(index: int, answer: Answer) -> None:
            nonlocal last_flush
            pending.append((index, answer))
            now = time.monotonic()
            if now - last_flush >= _FLUSH_INTERVAL:
                answers: Answers = ("answers", pending[:])
                _wire.send(sock, answers)
                pending.clear()
                last_flush = now

        def on_output(index: int, segments: Segments, dropped: int) -> None:
            # At once: the caller of a running invocation is waiting to see it.
            output: Output = ("output", index, segments, dropped)
            _wire.send(sock, output)

        def on_call(index: int, call: SandboxCall, remaining: float) -> None:
            # The platform runs it, and its answer comes back on this stream while the batch runs.
            _, request_id, kind, child_id, definition, calls = call
            forwarded: ChildCall = ("call", index, request_id, max(0.0, remaining), kind, child_id, definition, calls)
            _wire.send(sock, forwarded)

        batch = Batch(name, version, package, blob, timeout, memory, max_output, secrets, isolation, max_result)
        batch = _with_extras(batch, request)
        self.invoker.invoke(batch, indices, on_answer, on_output, Upstream(sock, on_call), on_event=_event_sender(sock))
        done: Done = ("done", pending)
        _wire.send(sock, done)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in list(self._connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _with_extras(batch: Batch, request: Run) -> Batch:
    """A Run's thirteenth item, when sent: a warm class's setup timeout, and an async function's --inputs."""
    extras: RunExtras = request[12] if len(request) > 12 else {}  # type: ignore[misc]  # older clients send 12
    if not extras:
        return batch
    setup_timeout = extras.get("setup_timeout")
    setup_limit = None if setup_timeout is None else float(setup_timeout)
    return dataclasses.replace(batch, setup_timeout=setup_limit, inputs=int(extras.get("inputs", 1)))


def _event_sender(sock: socket.socket) -> Callable[[StreamEvent], None]:
    """Passes a setup's end and each generator item to the client at once: its caller may be waiting on it."""

    def send(event: StreamEvent) -> None:
        _wire.send(sock, event)

    return send


_server: InvokerServer | None = None
_server_lock = threading.Lock()


class SandboxPlugin(WorkerPlugin):
    """Starts a worker's sandboxes and invocation stream with the worker, and stops them with it.

    One plugin per platform, named after its token; the worker's stream serves them all.
    """

    def __init__(self, token: str) -> None:
        if len(token.encode()) != TOKEN_LENGTH:
            raise ValueError(f"a token is {TOKEN_LENGTH} characters")
        self.token = token
        self.name = f"jupyter-faas-{token[:8]}"

    async def setup(self, worker: Any) -> None:
        global _server
        with _server_lock:
            if _server is None:
                invoker = Invoker(worker.state.nthreads)
                invoker.prewarm()
                _server = InvokerServer(invoker, worker.ip, psutil.Process().create_time())
            _server.tokens.add(self.token.encode())
            host, port = _server.endpoint
        # Published on the scheduler, so clients find it without asking workers (a dead one could stall them).
        await worker.scheduler.set_metadata(keys=[ENDPOINTS_KEY, worker.address], value=[host, port])

    def teardown(self, worker: Any) -> None:
        global _server
        with _server_lock:
            if _server is None:
                return
            _server.tokens.discard(self.token.encode())
            if not _server.tokens:
                _server.close()
                _server.invoker.close()
                _server = None
