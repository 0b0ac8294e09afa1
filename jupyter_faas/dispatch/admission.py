"""Admission: ids and packed arguments, invocations and their sinks, the concurrency gate, backlog, queue timeouts."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.errors import ArgumentsTooLarge, NoCapacity, QueueFull
from jupyter_faas.units import format_size
from jupyter_faas.worker.capture import Segments

__all__ = [
    "Backlog",
    "Call",
    "FutureSink",
    "Gate",
    "Invocation",
    "InvocationFuture",
    "QueueFull",
    "QueueTimeouts",
    "Sink",
    "map_batches",
    "new_ids",
    "pack_calls",
]

# One call's arguments: (args, kwargs).
Call = tuple[tuple[Any, ...], dict[str, Any]]


class Sink(Protocol):
    """Where invocations' results go: a future for one call, a MapResults for many."""

    def start(self) -> bool:
        """Called once before an invocation's first attempt; False means it was cancelled."""
        ...

    def wanted(self) -> bool:
        """Checked again just before sending; False drops it (a map interrupted while it waited)."""
        ...

    def drop(self) -> None:
        """A dropped invocation will never complete."""
        ...

    def stream(self, slot: int, segments: Segments) -> None:
        """Output of an invocation as it arrives, while it runs and then the rest of it (a worker thread)."""
        ...

    def output(self, slot: int, invocation_id: str, text: str) -> None:
        """All of a finished invocation's output, when it had any, just before it completes."""
        ...

    def complete(self, slot: int, value: Any, error: BaseException | None) -> None: ...


@dataclass(eq=False, slots=True)
class Invocation:
    id: str
    definition: FunctionDefinition
    blob: bytes
    index: int
    submitted: float
    started_clock: float
    sink: Sink
    slot: int
    attempts: int = 0
    begun: bool = False
    gate: Gate | None = None
    trigger: str = "call"
    max_output: int = 0
    secrets: dict[str, str] | None = None
    # faas.call.max-bytes when it was submitted: the largest result it may send back.
    max_bytes: int = 2**62
    # Nobody waits on it (?async=true, the queue, a trigger): it yields to invocations somebody waits on.
    background: bool = False
    # Output of the current attempt so far, and the bytes it dropped past max_output.
    output: Segments | None = None
    dropped: int = 0
    # The invocation that made this call, and the top of its call tree (None at the top); and the names
    # of the functions from the top down to this one, whose length is its depth.
    parent: str | None = None
    root: str | None = None
    chain: tuple[str, ...] = ()

    def called_by(self, caller: Invocation | None) -> None:
        """Place it in its caller's call tree (at the top, with no caller)."""
        if caller is None:
            self.chain = (self.definition.name,)
            return
        self.parent = caller.id
        self.root = caller.root or caller.id
        self.chain = (*caller.chain, self.definition.name)

    # A warm class's setup time (ms), when this invocation ran it; a generator's items so far, and when the
    # first was yielded (unix time).
    init_ms: float | None = None
    items: int = 0
    first_item: float | None = None
    # While it runs on a worker, how to stop it there; and whether its caller has asked for that (it left).
    stopper: Callable[[], None] | None = None
    stop_requested: bool = False

    def stoppable(self, stopper: Callable[[], None] | None) -> None:
        """How to stop it while it runs on a worker; None once it no longer runs there."""
        if stopper is not None:
            _stops.ready()
        self.stopper = stopper
        if stopper is not None and self.stop_requested:
            _stops.send(stopper)

    def request_stop(self) -> None:
        """Its caller has left: stop it where it runs (now, or as soon as it starts there); it is never retried.

        Safe to call from a garbage collection, in any thread at any point (a dropped stream does).
        """
        self.stop_requested = True
        stopper = self.stopper
        if stopper is not None:
            _stops.send(stopper)


class _StopSender:
    """Sends stops from a thread of its own: a stop may come from a garbage collection, in any thread at any
    point, and sending it takes the stream's lock, which that very thread may hold. A SimpleQueue's put is
    safe there; starting a thread is not, so the thread starts beforehand, when a stoppable call starts."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ready(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # none yet, or this is a forked process
                self._thread = threading.Thread(target=self._run, name="faas-stops", daemon=True)
                self._thread.start()

    def send(self, stopper: Callable[[], None]) -> None:
        self._queue.put(stopper)

    def _run(self) -> None:
        while True:
            stopper = self._queue.get()
            with contextlib.suppress(Exception):  # a stream already broken is its job's to report
                stopper()


_stops = _StopSender()


@dataclass(eq=False)
class Gate:
    """The concurrency limit of one function: at most `limit` invocations in flight, the rest wait here."""

    limit: int | None
    running: int = 0
    waiting: deque[Invocation] = field(default_factory=deque)

    def admit(self, invocation: Invocation) -> bool:
        if self.limit is None or self.running < self.limit:
            self.running += 1
            return True
        self.waiting.append(invocation)
        return False

    def release(self) -> Invocation | None:
        """Frees one place; hands it straight to the next waiting invocation, if any."""
        if self.waiting:
            return self.waiting.popleft()
        self.running -= 1
        return None


class InvocationFuture(Future[Any]):
    """The future of one invocation, carrying the invocation's id."""

    id: str
    # For a generator's call, set by the platform that runs it: stops it where it runs.
    on_stop: Callable[[], None] | None = None

    def stop_stream(self) -> None:
        """A generator's call whose caller closed its stream: stop it where it runs, unless it has ended.
        Nothing for other calls."""
        if self.on_stop is not None and not self.done():
            self.on_stop()


class FutureSink:
    """One call's result goes to its concurrent.futures.Future, and its output to `on_output`, if given."""

    __slots__ = ("expired", "future", "lock", "on_item", "on_output", "sent")

    def __init__(
        self,
        future: Future[Any],
        on_output: Callable[[Segments], None] | None = None,
        on_item: Callable[[bytes], None] | None = None,
    ) -> None:
        self.future = future
        self.on_output = on_output
        # A generator's items, pickled, as they come (it may block while the caller is behind).
        self.on_item = on_item
        self.lock = threading.Lock()
        self.sent = False
        self.expired = False

    def start(self) -> bool:
        with self.lock:
            return not self.expired and self.future.set_running_or_notify_cancel()

    def wanted(self) -> bool:
        with self.lock:
            # Once sent, the queue timeout no longer applies: the function's own timeout does.
            self.sent = not self.expired
            return self.sent

    def drop(self) -> None:
        pass

    def stream(self, slot: int, segments: Segments) -> None:
        if self.on_output is not None:
            self.on_output(segments)

    def output(self, slot: int, invocation_id: str, text: str) -> None:
        pass

    def expire(self, error: BaseException) -> None:
        """The queue timeout passed: end the future now, unless the invocation was already sent."""
        with self.lock:
            if self.sent or self.future.done():
                return
            self.expired = True
            self.future.set_exception(error)

    def complete(self, slot: int, value: Any, error: BaseException | None) -> None:
        if error is None:
            self.future.set_result(value)
        else:
            self.future.set_exception(error)


class Backlog:
    """Background invocations not yet ended, per function and in all, bounded by faas.queue.max-pending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_function: dict[str, int] = {}
        self._total = 0

    def join(self, name: str, future: Future[Any]) -> None:
        """Count a background invocation until it ends, or refuse it with QueueFull when the backlog is full."""
        total_limit, own_limit = _config.queue_max_pending(), _config.queue_max_pending_per_function()
        with self._lock:
            own = self._per_function.get(name, 0)
            if own >= own_limit or self._total >= total_limit:
                which = (
                    f"{name} has {own} pending (faas.queue.max-pending-per-function is {own_limit})"
                    if own >= own_limit
                    else f"{self._total} are pending (faas.queue.max-pending is {total_limit})"
                )
                raise QueueFull(f"{name}: too many invocations that nobody waits on: {which}. Try again later")
            self._per_function[name] = own + 1
            self._total += 1

        def leave(_: Future[Any]) -> None:
            with self._lock:
                self._per_function[name] -= 1
                self._total -= 1

        future.add_done_callback(leave)


class QueueTimeouts:
    """Invocations with a queue timeout, not yet sent: they end with NoCapacity at their deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id -> (deadline, sink, function name).
        self._queued: dict[str, tuple[float, FutureSink, str]] = {}

    def add(self, invocation_id: str, timeout: float, sink: FutureSink, name: str) -> None:
        with self._lock:
            self._queued[invocation_id] = (time.monotonic() + timeout, sink, name)

    def expire(self) -> None:
        """End invocations still not sent at their queue deadline; forget those sent or done meanwhile."""
        now = time.monotonic()
        due = []
        with self._lock:
            # Entries leave at the next tick once sent, so this holds about one tick's worth of invocations.
            for key, (deadline, sink, name) in list(self._queued.items()):
                if sink.sent or sink.future.done():
                    del self._queued[key]
                elif deadline <= now:
                    del self._queued[key]
                    due.append((sink, name))
        for sink, name in due:
            sink.expire(NoCapacity(f"{name}: no free slot within the queue timeout; try again later"))


def new_ids(count: int) -> list[str]:
    """Invocation ids: 64 random bits each, so an id tells nothing of how many came before it or will follow."""
    # One read of the system's random source for a whole map: ids are made 100,000 at a time.
    raw = os.urandom(8 * count).hex()
    return [raw[i : i + 16] for i in range(0, 16 * count, 16)]


def pack_calls(name: str, calls: Sequence[Call], limit: int | None = None, offset: int = 0) -> bytes:
    """One blob for many calls' arguments; an argument that cannot travel is named by its position.

    A call whose arguments are past `limit` (`faas.call.max-bytes`) once serialized is refused with
    ArgumentsTooLarge before anything is sent. A blob of many calls may be past it while each call is within.
    """
    limit = _config.call_max_bytes() if limit is None else limit
    try:
        blob: bytes = cloudpickle.dumps(list(calls), protocol=5)
    except Exception:
        for position, call in enumerate(calls):
            try:
                cloudpickle.dumps(call, protocol=5)
            except Exception as e:
                where = f" (item {offset + position})" if len(calls) > 1 or offset else ""
                raise TypeError(f"{name}(): an argument{where} cannot be sent to a worker: {e}") from None
        raise
    if len(blob) > limit:
        sizes = [len(blob)] if len(calls) == 1 else [len(cloudpickle.dumps(call, protocol=5)) for call in calls]
        for position, size in enumerate(sizes):
            if size > limit:
                where = f" (item {offset + position})" if len(calls) > 1 or offset else ""
                raise ArgumentsTooLarge(
                    f"{name}(): its arguments{where} are {format_size(size)} serialized; the limit is "
                    f"faas.call.max-bytes = {format_size(limit)}. Nothing was sent. Pass a path or a URL to "
                    "the data instead, or raise faas.call.max-bytes"
                )
    return blob


def map_batches(
    definition: FunctionDefinition,
    calls: Sequence[Call],
    size: int,
    sink: Sink,
    max_output: int,
    secrets: dict[str, str] | None,
    max_bytes: int,
) -> list[list[Invocation]]:
    """A map's calls as invocations in batches of `size`, each batch sharing one packed blob.

    An async function with --inputs N gets batches of at least N (without a concurrency limit): its sandbox
    runs a batch's calls N at a time.
    """
    if definition.limits.inputs > 1 and definition.limits.concurrency is None:
        size = max(size, definition.limits.inputs)
    # Submitted together, so one clock reading serves every invocation of the map.
    submitted, clock = time.time(), time.perf_counter()
    ids = iter(new_ids(len(calls)))
    batches: list[list[Invocation]] = []
    for first in range(0, len(calls), size):
        chunk = calls[first : first + size]
        name = definition.name
        blob = pack_calls(name, chunk, max_bytes, offset=first)
        # Every call is within the limit but not the batch: each goes alone, so no frame is past it.
        parts = [(blob, first, len(chunk))]
        if len(blob) > max_bytes:
            alone = [[call] for call in chunk]
            parts = [(pack_calls(name, one, max_bytes, first + at), first + at, 1) for at, one in enumerate(alone)]
        for part, start, count in parts:
            batch = [
                Invocation(
                    next(ids),
                    definition,
                    part,
                    at,
                    submitted,
                    clock,
                    sink,
                    start + at,
                    max_output=max_output,
                    secrets=secrets,
                    max_bytes=max_bytes,
                )
                for at in range(count)
            ]
            batches.append(batch)
    return batches
