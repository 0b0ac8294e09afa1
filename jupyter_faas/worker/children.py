"""The sandbox's end of calls made inside an invocation: sent to the worker, answered by the platform that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import cast

import cloudpickle

from jupyter_faas.errors import NestedCallError
from jupyter_faas.worker.messages import ChildKind, ChildReply, ChildResult, SandboxCall, SandboxRun, ToSandbox

# Set in every sandbox's environment, so the processes a function starts know it too: none of them may
# start a platform (and with it a cluster) of its own.
SANDBOX_VARIABLE = "JUPYTER_FAAS_SANDBOX"
# How often the reader looks for a request to pause, while nothing arrives.
_PAUSE_CHECK = 0.05


def in_sandbox() -> bool:
    """True in a sandbox process, and in every process started from one."""
    return os.environ.get(SANDBOX_VARIABLE) == "1"


class ChildCalls:
    """Sends the calls an invocation makes, and gets their answers back on the sandbox's socket.

    Until an invocation makes its first call, the sandbox's loop reads the socket itself. From then on a
    reader thread does, for good: it hands answers to whoever waits on them, and work to the loop.
    """

    def __init__(self, conn: Connection, send_lock: threading.Lock) -> None:
        self._conn = conn
        self._send_lock = send_lock
        self._waiting: dict[int, Callable[[ChildResult], None]] = {}
        self._waiting_lock = threading.Lock()
        self._work: queue.SimpleQueue[SandboxRun | None] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()

    def send(
        self,
        kind: ChildKind,
        child_id: str,
        definition: bytes,
        calls: bytes,
        on_reply: Callable[[ChildResult], None],
    ) -> None:
        """Send one call; `on_reply` gets its answer, from another thread."""
        request_id = int.from_bytes(os.urandom(7), "big")
        with self._waiting_lock:
            self._waiting[request_id] = on_reply
        self._start_reader()
        message: SandboxCall = ("call", request_id, kind, child_id, definition, calls)
        with self._send_lock:
            self._conn.send_bytes(pickle.dumps(message, protocol=5))

    def next_run(self) -> SandboxRun:
        """The next work for the sandbox's loop; EOFError once the worker is gone."""
        if self._reader is None:
            while True:
                message: ToSandbox = pickle.loads(self._conn.recv_bytes())
                if message[0] == "run":
                    return message
                self._deliver(message)  # a late answer, for an invocation that has already ended
        run = self._work.get()
        if run is None:
            raise EOFError("the worker closed the sandbox's socket")
        return run

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While a forked process answers for its call on the shared socket, this process reads nothing."""
        if self._reader is None:
            yield
            return
        self._resume.clear()
        self._paused.clear()
        self._pause.set()
        self._paused.wait()
        try:
            yield
        finally:
            self._pause.clear()
            self._resume.set()

    def after_fork(self) -> None:
        """In a process forked to run one call: the reader thread did not come along, and nothing waits yet."""
        self._reader = None
        self._waiting = {}
        self._waiting_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pause, self._paused, self._resume = threading.Event(), threading.Event(), threading.Event()

    def _start_reader(self) -> None:
        with self._start_lock:
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="faas-child-calls", daemon=True)
                self._reader.start()

    def _read(self) -> None:
        while True:
            if self._pause.is_set():
                self._paused.set()
                self._resume.wait()
                continue
            try:
                if not self._conn.poll(_PAUSE_CHECK):
                    continue
                message: ToSandbox = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                self._work.put(None)
                return
            if message[0] == "run":
                self._work.put(message)
            else:
                self._deliver(message)

    def _deliver(self, reply: ChildReply) -> None:
        _, request_id, payload = reply
        with self._waiting_lock:
            on_reply = self._waiting.pop(request_id, None)
        if on_reply is not None:
            on_reply(pickle.loads(payload))


_active: ChildCalls | None = None


def install(conn: Connection, send_lock: threading.Lock) -> ChildCalls:
    """Made once by the sandbox, for the socket it shares with its worker."""
    global _active
    _active = ChildCalls(conn, send_lock)
    return _active


def active() -> ChildCalls | None:
    """The sandbox's channel for calls, in the process that runs an invocation; None anywhere else."""
    return _active


def forget() -> None:
    """In a process a function forked: it does not speak for the invocation, so it makes no calls."""
    global _active
    _active = None


class _Answer:
    """Waits for one answer, from the reader thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: ChildResult | None = None

    def __call__(self, result: ChildResult) -> None:
        self.result = result
        self.done.set()

    def value(self) -> object:
        self.done.wait()
        assert self.result is not None
        status, value, _ = self.result
        if status == "error":
            raise value if isinstance(value, BaseException) else NestedCallError(str(value))
        return value


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile: the caller no longer waits
        future.set_result(None)


class Callee:
    """Another function (or this one itself) as a function's payload holds it: calls to it go to the platform.

    A function that names another jupyter-faas function ships it as this, not as the notebook's object, so
    calling it from a sandbox imports nothing of the notebook's side. `definition` is the pickled
    FunctionDefinition; empty, it means the calling function itself (recursion), which no payload can hold.
    """

    def __init__(self, name: str, definition: bytes = b"") -> None:
        self.__name__ = name
        self.definition = definition

    def __reduce__(self) -> tuple[type[Callee], tuple[str, bytes]]:
        return (Callee, (self.__name__, self.definition))

    def __repr__(self) -> str:
        what = "this function itself" if not self.definition else "a jupyter-faas function"
        return f"<{self.__name__}: {what}, called on the platform that runs this one>"

    def _send(self, kind: ChildKind, calls: list[tuple[tuple[object, ...], dict[str, object]]]) -> _Answer:
        channel = active()
        if channel is None:
            raise NestedCallError(
                f"{self.__name__}: a function can call other functions only from the process that runs it on the "
                "platform, not from a process it started (a subprocess, multiprocessing, a fork)"
            )
        answer = _Answer()
        child_id = os.urandom(8).hex() if kind != "map" else ""
        channel.send(kind, child_id, self.definition, cloudpickle.dumps(calls, protocol=5), answer)
        return answer

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._send("invoke", [(args, kwargs)]).value()

    async def aio(self, *args: object, **kwargs: object) -> object:
        """The call, awaited: the event loop runs on while it waits for the answer."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()
        answer = self._send("invoke", [(args, kwargs)])

        def wake() -> None:
            answer.done.wait()
            loop.call_soon_threadsafe(_settle, answered)

        threading.Thread(target=wake, name="faas-child-aio", daemon=True).start()
        await answered
        return answer.value()

    def submit(self, *args: object, **kwargs: object) -> Future[object]:
        """A concurrent.futures.Future of one call; the call runs while this function goes on."""
        future: Future[object] = Future()
        future.set_running_or_notify_cancel()
        answer = self._send("invoke", [(args, kwargs)])

        def settle() -> None:
            try:
                future.set_result(answer.value())
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=settle, name="faas-child-submit", daemon=True).start()
        return future

    def map(self, *iterables: object, return_exceptions: bool = False) -> list[object]:
        items: list[tuple[object, ...]] = list(zip(*iterables, strict=False))
        answered = self._send("map", [(item, {}) for item in items]).value()
        values, errors = cast(tuple[list[object], list[BaseException | None]], answered)
        if return_exceptions:
            return [value if error is None else error for value, error in zip(values, errors, strict=True)]
        for error in errors:
            if error is not None:
                raise error
        return list(values)

    def enqueue(self, *args: object, **kwargs: object) -> str:
        return str(self._send("enqueue", [(args, kwargs)]).value())
