"""The one platform object: it owns the cluster, dispatches invocations, retries them and records them."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import secrets
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.definition import secrets as _secrets
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.cluster import ClusterHandle, connect
from jupyter_faas.dispatch.transport import DirectDispatcher, Job, Outcome
from jupyter_faas.errors import (
    ArgumentsTooLarge,
    FaasError,
    FaasMemoryError,
    FaasTimeout,
    LogError,
    NoCapacity,
    QueueFull,
    RemoteError,
    WorkerLost,
    present,
)
from jupyter_faas.record.cost import Comparison, compare
from jupyter_faas.record.log import InvocationLog
from jupyter_faas.record.records import MESSAGE_LIMIT, InvocationRecord, RecordStore
from jupyter_faas.units import format_size
from jupyter_faas.worker.capture import Segments, cut_marker

# Outcomes that count as a failure worth another attempt when retries remain.
_RETRIED = ("error", "lost")
# Most calls of a map sent to one slot at once; a batch runs its calls in order, each with its own limits.
_MAX_BATCH = 1000
# Lines of output a map keeps to show under it; the rest stays in the records.
MAP_OUTPUT_LINES = 20


class _Sink(Protocol):
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
class _Invocation:
    id: str
    definition: FunctionDefinition
    blob: bytes
    index: int
    submitted: float
    started_clock: float
    sink: _Sink
    slot: int
    attempts: int = 0
    begun: bool = False
    gate: _Gate | None = None
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


@dataclass(eq=False)
class _Gate:
    """The concurrency limit of one function: at most `limit` invocations in flight, the rest wait here."""

    limit: int | None
    running: int = 0
    waiting: deque[_Invocation] = field(default_factory=deque)

    def admit(self, invocation: _Invocation) -> bool:
        if self.limit is None or self.running < self.limit:
            self.running += 1
            return True
        self.waiting.append(invocation)
        return False

    def release(self) -> _Invocation | None:
        """Frees one place; hands it straight to the next waiting invocation, if any."""
        if self.waiting:
            return self.waiting.popleft()
        self.running -= 1
        return None


# A kernel renews its lease this often while it runs invocations on its server's cluster; a lease not
# renewed for _LEASE_TTL is from a kernel that died, and no longer keeps workers up.
_LEASE_RENEW = 0.5
_LEASE_TTL = 10.0


@dataclass(slots=True)
class _Lease:
    """What a kernel sharing this platform's cluster last said: whether it runs invocations, and how many."""

    busy: bool
    wanted: int
    seen: float


class InvocationFuture(Future):
    """The future of one invocation, carrying the invocation's id."""

    id: str


class _FutureSink:
    """One call's result goes to its concurrent.futures.Future, and its output to `on_output`, if given."""

    __slots__ = ("expired", "future", "lock", "on_output", "sent")

    def __init__(self, future: Future, on_output: Callable[[Segments], None] | None = None) -> None:
        self.future = future
        self.on_output = on_output
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


class MapResults:
    """Collects a map's results in input order as they arrive, from any thread."""

    def __init__(self, count: int) -> None:
        self.total = count
        self.values: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.cancelled = False
        # Progress, for a progress bar to read: results in so far, and how many of them are errors.
        self.done = 0
        self.failed = 0
        # The first lines of output, to show under the map: (input position, invocation id, text).
        self.shown: list[tuple[int, str, str]] = []
        self.shown_lines = 0
        # Invocations that wrote any output, and how many lines they wrote in all.
        self.with_output = 0
        self.output_lines = 0
        self._remaining = count
        self._done = threading.Condition()

    def start(self) -> bool:
        return not self.cancelled

    wanted = start

    def stream(self, slot: int, segments: Segments) -> None:
        pass  # a map shows its output once it ends: thousands of invocations must not flood the cell

    def output(self, slot: int, invocation_id: str, text: str) -> None:
        lines = text.splitlines(keepends=True)
        with self._done:
            self.with_output += 1
            self.output_lines += len(lines)
            room = MAP_OUTPUT_LINES - self.shown_lines
            if room > 0:
                self.shown.append((slot, invocation_id, "".join(lines[:room])))
                self.shown_lines += min(room, len(lines))

    def complete(self, slot: int, value: Any, error: BaseException | None) -> None:
        self.values[slot] = value
        self.errors[slot] = error
        with self._done:
            self.done += 1
            self.failed += error is not None
            self._remaining -= 1
            if self._remaining <= 0:
                self._done.notify_all()

    def drop(self) -> None:
        """One invocation will never complete: it was cancelled before it started."""
        with self._done:
            self._remaining -= 1
            if self._remaining <= 0:
                self._done.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every result is in, or `timeout` seconds; True if they all are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._remaining > 0:
                left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if left <= 0:
                    return False
                # A bounded wait keeps Ctrl-C responsive in the notebook's main thread.
                self._done.wait(left)
        return True


def _rebuild_error(definition: FunctionDefinition, outcome: Outcome) -> BaseException:
    type_name, message, traceback_text, exc_bytes = outcome.error or ("Error", "", "", None)
    if outcome.status == "timeout":
        return present(FaasTimeout(message), definition.name, outcome.worker, "")
    if outcome.status == "memory":
        limit = format_size(definition.limits.memory)
        error = FaasMemoryError(message or f"{definition.name} went over its memory limit of {limit} and was stopped")
        return present(error, definition.name, outcome.worker, "")
    if outcome.status == "lost":
        return present(WorkerLost(f"{definition.name}: {message}"), definition.name, outcome.worker, "")
    if outcome.status == "setup":
        return present(FaasError(f"{definition.name}: {message}"), definition.name, None, "")
    rebuilt: BaseException | None = None
    if exc_bytes is not None:
        try:
            rebuilt = cloudpickle.loads(exc_bytes)
        except Exception:
            rebuilt = None
    if not isinstance(rebuilt, BaseException):
        rebuilt = RemoteError(type_name, message)
    return present(rebuilt, definition.name, outcome.worker, traceback_text)


def new_ids(count: int) -> list[str]:
    """Invocation ids: 64 random bits each, so an id tells nothing of how many came before it or will follow."""
    # One read of the system's random source for a whole map: ids are made 100,000 at a time.
    raw = os.urandom(8 * count).hex()
    return [raw[i : i + 16] for i in range(0, 16 * count, 16)]


def pack_calls(name: str, calls: Sequence[tuple[tuple, dict]], limit: int | None = None, offset: int = 0) -> bytes:
    """One blob for many calls' arguments; an argument that cannot travel is named by its position.

    A call whose arguments are past `limit` (`faas.call.max-bytes`) once serialized is refused with
    ArgumentsTooLarge before anything is sent. A blob of many calls may be past it while each call is within.
    """
    limit = _config.call_max_bytes() if limit is None else limit
    try:
        blob = cloudpickle.dumps(list(calls), protocol=5)
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


class Platform:
    """Definition -> dispatch -> worker -> record, for every entry point in this process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cluster: ClusterHandle | None = None
        self._dispatcher: DirectDispatcher | None = None
        self._stores: dict[str, RecordStore] = {}
        self._gates: dict[str, _Gate] = {}
        self._in_flight = 0
        self._held: deque[list[_Invocation]] = deque()
        self._retiring = False
        self._requested_workers = 0
        self._last_activity = time.monotonic()
        self._scale_events: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._controller: threading.Thread | None = None
        self._started_at: float | None = None
        self._log: InvocationLog | None = None
        self._closed = False
        # Invocations with a queue timeout, not yet sent: id -> (deadline, sink, function name).
        self._queued: dict[str, tuple[float, _FutureSink, str]] = {}
        self._listeners: list[Callable[[InvocationRecord], None]] = []
        self._leases: dict[str, _Lease] = {}
        self._retirements = 0
        self._zone_floor = 1
        # Background invocations not yet ended, per function and in all.
        self._backlog: dict[str, int] = {}
        self._backlog_total = 0
        # Requirement sets already installed on this platform's cluster (their PipInstall plugin names).
        self._installed: set[str] = set()
        # Kernel side: when this platform last told its server about its work, and what it said.
        self._lease_sent = 0.0
        self._lease_busy = False
        self._owner_retirements: int | None = None

    # -- life cycle ----------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._cluster is not None

    def start(self) -> Platform:
        if self._cluster is not None:
            return self
        with self._lock:
            if self._closed:
                raise FaasError("this platform was shut down; call jupyter_faas.platform() for a new one")
            if self._cluster is None:
                token = secrets.token_hex(16)
                self._log = _open_log()
                cluster = connect(token, self)
                self._dispatcher = DirectDispatcher(cluster, token)
                self._cluster = cluster
                self._started_at = time.monotonic()
                self._note_workers(cluster.worker_count())
                self._controller = threading.Thread(target=self._control, name="faas-keepalive", daemon=True)
                self._controller.start()
        return self

    def shutdown(self) -> None:
        """Stop the cluster; invocations still waiting fail with FaasError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cluster, self._cluster = self._cluster, None
            dispatcher, self._dispatcher = self._dispatcher, None
            waiting = [i for held in self._held for i in held]
            waiting += [i for gate in self._gates.values() for i in gate.waiting]
            self._held.clear()
            for gate in self._gates.values():
                gate.waiting.clear()
        self._stop.set()
        if self._controller is not None:
            self._controller.join(timeout=5)
        for invocation in waiting:
            if invocation.begun or invocation.sink.start():
                error = FaasError("the platform was shut down before this ran")
                invocation.sink.complete(invocation.slot, None, error)
        if dispatcher is not None:
            dispatcher.close()
        if cluster is not None:
            cluster.close()
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except LogError as e:
                warnings.warn(f"jupyter_faas: the last invocation records were not saved: {e}", stacklevel=2)

    # -- what users read -----------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Workers connected now."""
        cluster = self._cluster
        return 0 if cluster is None else cluster.worker_count()

    @property
    def maximum(self) -> int:
        return self._cluster.maximum if self._cluster else _config.maximum_workers()

    @property
    def mode(self) -> str | None:
        return self._cluster.mode if self._cluster else None

    @property
    def scheduler_address(self) -> str:
        return self.start()._cluster.scheduler_address  # type: ignore[union-attr]

    @property
    def dashboard_link(self) -> str | None:
        return self.start()._cluster.dashboard_link  # type: ignore[union-attr]

    @property
    def scale_events(self) -> list[tuple[float, int]]:
        """(unix time, worker count) at each change the platform saw."""
        with self._lock:
            return list(self._scale_events)

    @property
    def client(self) -> Any:
        """The distributed.Client that connects the platform to its cluster."""
        return self.start()._cluster.client  # type: ignore[union-attr]

    def flush_log(self) -> None:
        """Commit every record so far to the durable log (a no-op without one)."""
        if self._log is not None:
            self._log.flush()

    def records(self, name: str) -> list[InvocationRecord]:
        store = self._stores.get(name)
        return store.records() if store else []

    def recent(self, name: str, count: int) -> list[InvocationRecord]:
        """`name`'s newest `count` records, oldest first."""
        store = self._stores.get(name)
        return store.last(count) if store else []

    def find_record(self, invocation_id: str) -> InvocationRecord | None:
        """The record of one invocation, of any function, while it is kept in memory."""
        with self._lock:
            stores = list(self._stores.values())
        for store in stores:
            record = store.find(invocation_id)
            if record is not None:
                return record
        return None

    def latencies(self, name: str) -> list[float]:
        """The latency (ms) of each of `name`'s records still kept, oldest first."""
        store = self._stores.get(name)
        return store.latencies() if store else []

    def stats(self, name: str) -> dict[str, Any]:
        return self._store(name).stats(_config.pricing())

    def function_names(self) -> list[str]:
        """Every function invoked or looked at on this platform, in the order they first appeared."""
        with self._lock:
            return list(self._stores)

    def revision(self, name: str | None = None) -> int:
        """Grows with every finished invocation (of `name`, or of any function): cheap to poll for changes."""
        with self._lock:
            stores = [self._stores[name]] if name in self._stores else [] if name else list(self._stores.values())
        return sum(store.revision for store in stores)

    @property
    def idle_timeout(self) -> float:
        """The keep-alive, in seconds: `faas.cluster.idle-timeout`."""
        return _config.idle_timeout()

    def seconds_to_scale_to_zero(self) -> float | None:
        """Time left before every worker is retired, if nothing runs; None when that is not counting down."""
        cluster = self._cluster
        if cluster is None or not cluster.retires_when_idle or cluster.worker_count() == 0:
            return None
        with self._lock:
            if self._in_flight or self._held or self._retiring or self._remote_wanted()[0]:
                return None
            idle_for = time.monotonic() - self._last_activity
        return max(0.0, self.idle_timeout - idle_for)

    def cost_comparison(self) -> Comparison:
        """Pay-per-use since the platform started, against an always-on server of the cluster's maximum size."""
        invocations, gb_seconds_total, busy_s = 0, 0.0, 0.0
        with self._lock:
            stores = list(self._stores.values())
        for store in stores:
            count, gb_s, busy = store.totals()
            invocations, gb_seconds_total, busy_s = invocations + count, gb_seconds_total + gb_s, busy_s + busy
        period_s = 0.0 if self._started_at is None else time.monotonic() - self._started_at
        slots = self.maximum * _config.slots_per_worker()
        return compare(invocations, gb_seconds_total, busy_s, period_s, slots, _config.pricing())

    def __repr__(self) -> str:
        if self._cluster is None:
            return "<jupyter_faas platform: not started>"
        return (
            f"<jupyter_faas platform: {self._cluster.mode} cluster at {self._cluster.scheduler_address}, "
            f"{self.workers}/{self.maximum} workers>"
        )

    # -- invoking ------------------------------------------------------------------------------------

    def _store(self, name: str) -> RecordStore:
        store = self._stores.get(name)
        if store is None:
            with self._lock:
                store = self._stores.setdefault(name, RecordStore(_config.records_per_function()))
        return store

    def _gate(self, definition: FunctionDefinition) -> _Gate:
        gate = self._gates.get(definition.name)
        if gate is None or gate.limit != definition.limits.concurrency:
            # A redefinition with another limit starts a new gate; calls in flight keep the old one.
            gate = self._gates[definition.name] = _Gate(definition.limits.concurrency)
        return gate

    def invoke(
        self,
        definition: FunctionDefinition,
        blob: bytes,
        queue_timeout: float | None = None,
        trigger: str = "call",
        on_output: Callable[[Segments], None] | None = None,
        background: bool = False,
    ) -> InvocationFuture:
        """One invocation of the single call packed in `blob`; the future ends with its result or error.

        With `queue_timeout`, an invocation not sent to a worker within that many seconds (no free
        slot, or no worker yet) ends with NoCapacity, and is never run. `trigger` names what made it
        run, in its record. `on_output` gets its output, (stream, text) pieces, while it runs (from a
        platform thread), and the rest before the future ends.

        A `background` invocation is one nobody waits on: it is sent only when no waited-on one waits
        for a slot, and past `faas.queue.max-pending` of them (all functions) or
        `faas.queue.max-pending-per-function` (this one) it is refused with QueueFull, never run.
        """
        max_output, max_bytes = _config.log_max_output(), _config.call_max_bytes()
        secrets = _secrets.values_for(definition)
        self.start()
        self._ensure_requirements(definition)
        future = InvocationFuture()
        future.id = new_ids(1)[0]
        if background:
            self._join_backlog(definition.name, future)
        sink = _FutureSink(future, on_output)
        invocation = _Invocation(
            future.id, definition, blob, 0, time.time(), time.perf_counter(), sink, 0, trigger=trigger,
            max_output=max_output, secrets=secrets, max_bytes=max_bytes, background=background,
        )  # fmt: skip
        if queue_timeout is not None:
            with self._lock:
                self._queued[future.id] = (time.monotonic() + queue_timeout, sink, definition.name)
        with self._lock:
            invocation.gate = self._gate(definition)
            admitted = invocation.gate.admit(invocation)
        if admitted:
            self._launch([invocation])
        return future

    def _join_backlog(self, name: str, future: InvocationFuture) -> None:
        """Count a background invocation until it ends, or refuse it when the backlog is full."""
        total_limit, own_limit = _config.queue_max_pending(), _config.queue_max_pending_per_function()
        with self._lock:
            own = self._backlog.get(name, 0)
            if own >= own_limit or self._backlog_total >= total_limit:
                which = (
                    f"{name} has {own} pending (faas.queue.max-pending-per-function is {own_limit})"
                    if own >= own_limit
                    else f"{self._backlog_total} are pending (faas.queue.max-pending is {total_limit})"
                )
                raise QueueFull(f"{name}: too many invocations that nobody waits on: {which}. Try again later")
            self._backlog[name] = own + 1
            self._backlog_total += 1

        def leave(_: Future) -> None:
            with self._lock:
                self._backlog[name] -= 1
                self._backlog_total -= 1

        future.add_done_callback(leave)

    def map(self, definition: FunctionDefinition, calls: Sequence[tuple[tuple, dict]]) -> MapResults:
        """Invocations of many calls, sent in batches; results arrive in a MapResults in input order."""
        max_output, max_bytes = _config.log_max_output(), _config.call_max_bytes()
        secrets = _secrets.values_for(definition)
        self.start()
        self._ensure_requirements(definition)
        results = MapResults(len(calls))
        if not calls:
            return results
        limited = definition.limits.concurrency is not None
        slots = self._dispatcher.capacity() if self._dispatcher else 0  # type: ignore[union-attr]
        slots = slots or self.maximum * _config.slots_per_worker()
        # Four batches a slot keeps the slots busy to the end; a concurrency limit needs single calls.
        size = 1 if limited else max(1, min(_MAX_BATCH, math.ceil(len(calls) / (4 * slots))))
        # Submitted together, so one clock reading serves every invocation of the map.
        submitted, clock = time.time(), time.perf_counter()
        ids = iter(new_ids(len(calls)))
        batches: list[list[_Invocation]] = []
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
                    _Invocation(
                        next(ids),
                        definition,
                        part,
                        at,
                        submitted,
                        clock,
                        results,
                        start + at,
                        max_output=max_output,
                        secrets=secrets,
                        max_bytes=max_bytes,
                    )
                    for at in range(count)
                ]
                batches.append(batch)
        if not limited:
            for batch in batches:
                self._launch(batch)
            return results
        admitted = []
        with self._lock:
            gate = self._gate(definition)
            for batch in batches:
                batch[0].gate = gate
                if gate.admit(batch[0]):
                    admitted.append(batch)
        for batch in admitted:
            self._launch(batch)
        return results

    def _ensure_requirements(self, definition: FunctionDefinition) -> None:
        """On a cluster with its own environment, install what the function declares, once, before it runs."""
        requirements = definition.requirements
        cluster = self._cluster
        if not requirements or cluster is None or cluster.mode not in ("address", "factory"):
            return
        from jupyter_faas.definition.requirements import plugin_name

        name = plugin_name(requirements)
        with self._lock:
            if name in self._installed:
                return
        from distributed.diagnostics.plugin import PipInstall

        try:
            cluster.client.register_plugin(PipInstall(list(requirements), restart_workers=False), name=name)
        except Exception as e:
            raise FaasError(
                f"{definition.name}: installing {', '.join(requirements)} on the workers failed: {e}"
            ) from None
        with self._lock:
            self._installed.add(name)

    def _launch(self, invocations: list[_Invocation]) -> None:
        invocations = [invocation for invocation in invocations if self._started(invocation)]
        if not invocations:
            return
        cluster = self._cluster
        if cluster is not None and cluster.shares_owner_cluster and self._in_flight == 0:
            self._check_in(cluster)
        with self._lock:
            if self._retiring:
                self._held.append(invocations)
                return
            self._in_flight += len(invocations)
            self._last_activity = time.monotonic()
            # A warm zoned function keeps a worker in each of its zones, until the keep-alive retires them all.
            self._zone_floor = max(self._zone_floor, invocations[0].definition.limits.zones or 1)
            self._scale_for_demand()
            dispatcher = self._dispatcher
        for invocation in invocations:
            invocation.attempts += 1
            invocation.output, invocation.dropped = None, 0
        first = invocations[0]
        definition = first.definition
        by_index = {invocation.index: invocation for invocation in invocations}
        if dispatcher is None:
            lost = Outcome("lost", error=("WorkerLost", "the platform was shut down", "", None))
            for invocation in invocations:
                self._on_outcome(invocation, lost)
            return
        dispatcher.send(
            Job(
                name=definition.name,
                version=definition.version,
                package=(definition.payload, definition.filename, definition.source, definition.reusable),
                blob=first.blob,
                indices=list(by_index),
                timeout=definition.limits.timeout,
                memory=definition.limits.memory,
                deliver=lambda index, outcome: self._on_outcome(by_index[index], outcome),
                keep=lambda index: self._still_wanted(by_index[index]),
                zones=definition.limits.zones,
                max_output=first.max_output,
                secrets=first.secrets,
                isolation=definition.limits.isolation,
                max_result=first.max_bytes,
                background=first.background,
                stream=lambda index, segments, dropped: self._on_stream(by_index[index], segments, dropped),
            )
        )

    def _on_stream(self, invocation: _Invocation, segments: Segments, dropped: int) -> None:
        """Output of a running invocation: kept for its record, and passed on to whoever watches it."""
        if invocation.output is None:
            invocation.output = []
        invocation.output.extend(segments)
        invocation.dropped = dropped
        with contextlib.suppress(Exception):  # a watcher's failure must not lose the invocation
            invocation.sink.stream(invocation.slot, segments)

    def _started(self, invocation: _Invocation) -> bool:
        """Starts an invocation once (a held or retried one is already started); False if it was cancelled."""
        if invocation.begun:
            return True
        if invocation.sink.start():
            invocation.begun = True
            return True
        invocation.sink.drop()
        self._release_gate(invocation)
        return False

    def _still_wanted(self, invocation: _Invocation) -> bool:
        """False for an invocation cancelled before it was sent; it is dropped without a record."""
        if invocation.sink.wanted():
            return True
        with self._lock:
            self._in_flight -= 1
        invocation.sink.drop()
        self._release_gate(invocation)
        return False

    def _scale_for_demand(self) -> None:
        """Ask for min(demand, maximum) workers at once, instead of waiting for an adaptive tick."""
        cluster = self._cluster
        if cluster is None or not cluster.scales_on_demand:
            return
        wanted = min(max(self._in_flight + self._remote_wanted()[1], self._zone_floor), cluster.maximum)
        if wanted > self._requested_workers:
            self._requested_workers = wanted
            cluster.scale(wanted)

    def _on_outcome(self, invocation: _Invocation, outcome: Outcome) -> None:
        retry = outcome.status in _RETRIED and invocation.attempts <= invocation.definition.limits.retries
        with self._lock:
            self._in_flight -= 1
            self._last_activity = time.monotonic()
        if retry and not self._closed:
            self._launch([invocation])
            return
        self._finish(invocation, outcome)

    def _finish(self, invocation: _Invocation, outcome: Outcome) -> None:
        definition = invocation.definition
        latency_ms = (time.perf_counter() - invocation.started_clock) * 1000
        cold = outcome.fresh or (outcome.worker_started is not None and outcome.worker_started > invocation.submitted)
        result: Any = None
        error: BaseException | None = None
        status = outcome.status
        if status == "ok":
            try:
                result = cloudpickle.loads(outcome.value)
            except Exception as e:
                status = "error"
                error = FaasError(f"{definition.name} returned a value the notebook cannot load: {e}")
        else:
            error = _rebuild_error(definition, outcome)
        started, finished = outcome.started, outcome.finished
        output = self._final_output(invocation, outcome)
        record = InvocationRecord(
            id=invocation.id,
            function=definition.name,
            version=definition.version,
            submitted=invocation.submitted,
            started=started,
            finished=finished,
            queued_ms=None if started is None else max(0.0, (started - invocation.submitted) * 1000),
            cold_start=bool(cold),
            duration_ms=None if started is None or finished is None else (finished - started) * 1000,
            latency_ms=latency_ms,
            worker=outcome.worker,
            status="error" if status in ("lost", "setup") else status,
            error=None if error is None else (outcome.error[0] if outcome.error else type(error).__name__),
            message=None if error is None else str(error)[:MESSAGE_LIMIT],
            attempts=invocation.attempts,
            peak_memory=outcome.peak_memory,
            memory_limit=definition.limits.memory,
            trigger=invocation.trigger,
            output=output,
        )
        self._store(definition.name).add(record)
        for listener in self._listeners:
            with contextlib.suppress(Exception):  # an observer's bug must not lose the caller's result
                listener(record)
        log = self._log
        if log is not None:
            # LogError: closed by a shutdown racing this last record, which stays in memory.
            with contextlib.suppress(LogError):
                log.append(record)
        self._release_gate(invocation)
        if output:
            with contextlib.suppress(Exception):
                invocation.sink.output(invocation.slot, invocation.id, output)
        invocation.sink.complete(invocation.slot, result, error)

    def _final_output(self, invocation: _Invocation, outcome: Outcome) -> str:
        """The whole output of the attempt that ended, its tail passed on to the watcher first."""
        tail: Segments = []
        dropped = invocation.dropped
        if outcome.output is not None:
            tail, dropped = list(outcome.output[0]), outcome.output[1]
        if dropped:
            last = tail[-1][1] if tail else invocation.output[-1][1] if invocation.output else "\n"
            marker = cut_marker(dropped, invocation.max_output)
            tail.append(("stderr", marker if last.endswith("\n") else "\n" + marker))
        if tail:
            self._on_stream(invocation, tail, dropped)
        segments = invocation.output
        invocation.output = None
        return "".join(text for _, text in segments) if segments else ""

    def _release_gate(self, invocation: _Invocation) -> None:
        gate = invocation.gate
        if gate is None:
            return
        invocation.gate = None
        with self._lock:
            following = gate.release()
        if following is not None:
            self._launch_or_fail([following])

    # -- keep-alive ----------------------------------------------------------------------------------

    def _note_workers(self, count: int) -> None:
        with self._lock:
            if not self._scale_events or self._scale_events[-1][1] != count:
                self._scale_events.append((time.time(), count))

    def _control(self) -> None:
        """Watch the worker count, and retire every worker once nothing has run for the idle-timeout."""
        while not self._stop.wait(0.1):
            cluster = self._cluster
            if cluster is None:
                return
            try:
                self._expire_queued()
                self._note_workers(cluster.worker_count())
                if cluster.retires_when_idle:
                    self._maybe_retire(cluster)
                elif cluster.shares_owner_cluster:
                    self._renew_lease(cluster)
            except Exception:  # the cluster is going away under us; the next tick or shutdown settles it
                if self._stop.is_set():
                    return

    def _expire_queued(self) -> None:
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

    def add_listener(self, listener: Callable[[InvocationRecord], None]) -> None:
        """Call `listener` with every finished invocation's record (from a platform thread)."""
        self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Callable[[InvocationRecord], None]) -> None:
        self._listeners = [known for known in self._listeners if known is not listener]

    # -- kernels sharing this platform's cluster -----------------------------------------------------

    def note_lease(self, owner: str, busy: bool, wanted: int) -> dict[str, Any]:
        """A kernel using this platform's cluster reports its work; refused (ok False) while workers retire."""
        with self._lock:
            if self._retiring:
                return {"ok": False, "retirements": self._retirements}
            now = time.monotonic()
            self._leases[owner] = _Lease(bool(busy), max(0, int(wanted)), now)
            self._last_activity = now
            self._scale_for_demand()
            return {"ok": True, "retirements": self._retirements}

    def _remote_wanted(self) -> tuple[bool, int]:
        """(whether a live kernel is running invocations here, the workers those kernels want)."""
        now = time.monotonic()
        live = [lease for lease in self._leases.values() if lease.busy and now - lease.seen < _LEASE_TTL]
        return bool(live), sum(lease.wanted for lease in live)

    def _renew_lease(self, cluster: ClusterHandle) -> None:
        """Kernel side: keep the server's keep-alive from retiring workers under this kernel's invocations."""
        with self._lock:
            busy = self._in_flight > 0
            wanted = min(self._in_flight, self.maximum)
            due = time.monotonic() - self._lease_sent >= _LEASE_RENEW
            if not (busy and due) and not (self._lease_busy and not busy):
                return
            self._lease_sent, self._lease_busy = time.monotonic(), busy
        cluster.lease(busy, wanted, wait=False)

    def _check_in(self, cluster: ClusterHandle) -> None:
        """Kernel side, on the way from idle to busy: wait out a scale-down the server has begun."""
        if time.monotonic() - self._lease_sent < _LEASE_RENEW:
            return
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = cluster.lease(True, 1, wait=True)
            except Exception:  # no answer: the invocation itself will report what is wrong
                return
            if answer.get("retirements") != self._owner_retirements and self._dispatcher is not None:
                # The server retired every worker since we last looked: our links point at closed workers.
                self._dispatcher.forget_workers()
                self._owner_retirements = answer.get("retirements")
            if answer.get("ok") or time.monotonic() > deadline:
                break
            self._stop.wait(0.02)
        with self._lock:
            self._lease_sent, self._lease_busy = time.monotonic(), True

    def _keepalive_expired(self) -> bool:
        try:
            idle_timeout = _config.idle_timeout()
        except _config.ConfigError:
            return False
        return time.monotonic() - self._last_activity >= idle_timeout

    def demand(self) -> int:
        """Workers wanted now: the most asked for since the platform was last idle, until the keep-alive ends."""
        with self._lock:
            if self._in_flight == 0 and not self._held and self._keepalive_expired() and not self._remote_wanted()[0]:
                return 0
            _, remote = self._remote_wanted()
            return max(self._requested_workers, min(max(self._in_flight + remote, self._zone_floor), self.maximum))

    def begin_retire(self) -> bool:
        """Start holding new invocations, if nothing is in flight and the keep-alive has passed."""
        with self._lock:
            if self._in_flight or self._held or self._retiring or not self._keepalive_expired():
                return False
            if self._remote_wanted()[0]:
                return False
            # From here new invocations wait in _held, so none can land on a worker being retired.
            self._retiring = True
            return True

    def end_retire(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.forget_workers()
        with self._lock:
            self._retiring = False
            self._retirements += 1
            self._requested_workers = 0
            self._zone_floor = 1
            held = list(self._held)
            self._held.clear()
        for invocations in held:
            self._launch_or_fail(invocations)

    def _launch_or_fail(self, invocations: list[_Invocation]) -> None:
        """Launch from a background thread: whatever goes wrong must end the invocations, not lose them."""
        try:
            self._launch(invocations)
        except Exception as e:
            for invocation in invocations:
                if invocation.begun or invocation.sink.start():
                    invocation.sink.complete(invocation.slot, None, FaasError(f"could not dispatch: {e}"))

    def _maybe_retire(self, cluster: ClusterHandle) -> None:
        if not (self._requested_workers or cluster.worker_count()) or cluster.has_dask_work():
            return
        if not self.begin_retire():
            return
        try:
            cluster.scale(0)
            cluster.wait_for_workers(0, timeout=30)
            self._note_workers(cluster.worker_count())
        finally:
            self.end_retire()


def _open_log() -> InvocationLog | None:
    """The durable log, if enabled; a state dir that cannot hold it is a warning, not a dead platform."""
    if not _config.log_enabled():
        return None
    state_dir = _config.state_dir()
    try:
        return InvocationLog(state_dir, _config.log_max_records())
    except LogError as e:
        warnings.warn(
            f"jupyter_faas: invocations are not being saved to {state_dir}: {e}. "
            "Set faas.state-dir to a writable folder.",
            stacklevel=3,
        )
        return None


_platform: Platform | None = None
_platform_lock = threading.Lock()


def current(start: bool = True) -> Platform:
    """The process's platform, created on first use."""
    global _platform
    with _platform_lock:
        if _platform is None or _platform._closed:
            _platform = Platform()
        platform = _platform
    return platform.start() if start else platform


@atexit.register
def _shutdown_at_exit() -> None:
    if _platform is not None:
        _platform.shutdown()
