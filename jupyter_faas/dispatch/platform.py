"""The platform facade: it owns the cluster, dispatches invocations, retries them and records them.

Past 400 lines because it is the one object every entry point holds: its life cycle, the queries users read and
the launch path stay together; admission, keep-alive policy, outcomes and the lease protocol live in their modules.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import secrets
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.definition import secrets as _secrets
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch import keepalive as _keepalive
from jupyter_faas.dispatch import streams as _streams
from jupyter_faas.dispatch.admission import (
    Backlog,
    Call,
    FutureSink,
    Gate,
    Invocation,
    InvocationFuture,
    QueueFull,
    QueueTimeouts,
    map_batches,
    new_ids,
    pack_calls,
)
from jupyter_faas.dispatch.cluster import ClusterHandle, connect
from jupyter_faas.dispatch.compose import Composer
from jupyter_faas.dispatch.inside import CallerPlatform, in_sandbox, refuse_platform
from jupyter_faas.dispatch.lease import KernelLease, Leases
from jupyter_faas.dispatch.outcomes import MAP_OUTPUT_LINES, MapResults, conclude, on_stream, should_retry
from jupyter_faas.dispatch.transport import DirectDispatcher, Job, Outcome
from jupyter_faas.errors import ConfigError, FaasError, LogError
from jupyter_faas.record import tracing as _tracing
from jupyter_faas.record.calltree import WaterfallRow, waterfall
from jupyter_faas.record.cost import Comparison, compare
from jupyter_faas.record.log import InvocationLog
from jupyter_faas.record.records import InvocationRecord, RecordStore
from jupyter_faas.record.tracing import Tracing
from jupyter_faas.worker.capture import Segments

# Names other modules import from here.
__all__ = [
    "MAP_OUTPUT_LINES",
    "Call",
    "InvocationFuture",
    "MapResults",
    "Platform",
    "QueueFull",
    "calling",
    "current",
    "new_ids",
    "pack_calls",
]

# Most calls of a map sent to one slot at once; a batch runs its calls in order, each with its own limits.
_MAX_BATCH = 1000


class Platform:
    """Definition -> dispatch -> worker -> record, for every entry point in this process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cluster: ClusterHandle | None = None
        self._dispatcher: DirectDispatcher | None = None
        self._stores: dict[str, RecordStore] = {}
        self._gates: dict[str, Gate] = {}
        self._in_flight = 0
        self._held: deque[list[Invocation]] = deque()
        self._retiring = False
        self._requested_workers = 0
        self._last_activity = time.monotonic()
        self._scale_events: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._controller: threading.Thread | None = None
        self._started_at: float | None = None
        self._log: InvocationLog | None = None
        self._closed = False
        self._queued = QueueTimeouts()
        self._listeners: list[Callable[[InvocationRecord], None]] = []
        # Listeners of this platform's own invocations only, not of records adopted from another process.
        self._own_listeners: list[Callable[[InvocationRecord], None]] = []
        self._tracing: Tracing | None = None
        self._leases = Leases()
        self._retirements = 0
        self._zone_floor = 1
        self._backlog = Backlog()
        # Requirement sets already installed on this platform's cluster (their PipInstall plugin names).
        self._installed: set[str] = set()
        # Kernel side: what this platform last told its server about its work.
        self._lease = KernelLease(self._lock, self._stop)
        # Calls made inside invocations: run here, as invocations of their own.
        self._compose = Composer(self)

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
                if self._tracing is None:
                    # Before the cluster: a bad or unusable faas.tracing.otlp-endpoint stops here, naming the key.
                    self.use_tracing(_tracing.from_config())
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
        # The last spans are sent before the process may end.
        self.use_tracing(None)

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

    def children(self, invocation_id: str) -> list[InvocationRecord]:
        """The records, still kept in memory, of the calls one invocation made, in the order they were made."""
        with self._lock:
            stores = list(self._stores.values())
        found = [record for store in stores for record in store.children(invocation_id)]
        return sorted(found, key=lambda record: record.submitted)

    def call_tree(self, invocation_id: str) -> list[WaterfallRow]:
        """The invocation and every call below it, as waterfall rows; [] when its record is no longer kept."""
        top = self.find_record(invocation_id)
        if top is None:
            return []
        return waterfall(top, self.children, _config.pricing())

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
            activity = self._activity()
        return _keepalive.seconds_to_zero(activity, self.idle_timeout)

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

    def _gate(self, definition: FunctionDefinition) -> Gate:
        gate = self._gates.get(definition.name)
        if gate is None or gate.limit != definition.limits.concurrency:
            # A redefinition with another limit starts a new gate; calls in flight keep the old one.
            gate = self._gates[definition.name] = Gate(definition.limits.concurrency)
        return gate

    def invoke(
        self,
        definition: FunctionDefinition,
        blob: bytes,
        queue_timeout: float | None = None,
        trigger: str = "call",
        on_output: Callable[[Segments], None] | None = None,
        background: bool = False,
        parent: Invocation | None = None,
        invocation_id: str | None = None,
        on_item: Callable[[bytes], None] | None = None,
    ) -> InvocationFuture:
        """One invocation of the single call packed in `blob`; the future ends with its result or error.

        With `queue_timeout`, an invocation not sent to a worker within that many seconds (no free
        slot, or no worker yet) ends with NoCapacity, and is never run. `trigger` names what made it
        run, in its record. `on_output` gets its output, (stream, text) pieces, while it runs (from a
        platform thread), and the rest before the future ends.

        A `background` invocation is one nobody waits on: it is sent only when no waited-on one waits
        for a slot, and past `faas.queue.max-pending` of them (all functions) or
        `faas.queue.max-pending-per-function` (this one) it is refused with QueueFull, never run.

        `parent` is the invocation that made this call, when one did; `invocation_id`, an id its caller chose.
        """
        max_output, max_bytes = _config.log_max_output(), _config.call_max_bytes()
        secrets = _secrets.values_for(definition)
        self.start()
        self._ensure_requirements(definition)
        future = InvocationFuture()
        future.id = invocation_id or new_ids(1)[0]
        if background:
            self._backlog.join(definition.name, future)
        sink = FutureSink(future, on_output, on_item)
        invocation = Invocation(
            future.id, definition, blob, 0, time.time(), time.perf_counter(), sink, 0, trigger=trigger,
            max_output=max_output, secrets=secrets, max_bytes=max_bytes, background=background,
        )  # fmt: skip
        if on_item is not None:
            future.on_stop = invocation.request_stop
        invocation.called_by(parent)
        if queue_timeout is not None:
            self._queued.add(future.id, queue_timeout, sink, definition.name)
        with self._lock:
            invocation.gate = self._gate(definition)
            admitted = invocation.gate.admit(invocation)
        if admitted:
            self._launch([invocation])
        return future

    def map(
        self, definition: FunctionDefinition, calls: Sequence[Call], parent: Invocation | None = None
    ) -> MapResults:
        """Invocations of many calls, sent in batches; results arrive in a MapResults in input order."""
        max_output, max_bytes = _config.log_max_output(), _config.call_max_bytes()
        secrets = _secrets.values_for(definition)
        self.start()
        self._ensure_requirements(definition)
        results = MapResults(len(calls))
        if not calls:
            return results
        limited = definition.limits.concurrency is not None
        slots = self._dispatcher.capacity() if self._dispatcher else 0
        slots = slots or self.maximum * _config.slots_per_worker()
        # Four batches a slot keeps the slots busy to the end; a concurrency limit needs single calls.
        size = 1 if limited else max(1, min(_MAX_BATCH, math.ceil(len(calls) / (4 * slots))))
        batches = map_batches(definition, calls, size, results, max_output, secrets, max_bytes)
        for batch in batches:
            for invocation in batch:
                invocation.called_by(parent)
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

    def _launch(self, invocations: list[Invocation]) -> None:
        invocations = [invocation for invocation in invocations if self._started(invocation)]
        if not invocations:
            return
        cluster = self._cluster
        if cluster is not None and cluster.shares_owner_cluster and self._in_flight == 0:
            self._lease.check_in(cluster, self._dispatcher)
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
                stream=lambda index, segments, dropped: on_stream(by_index[index], segments, dropped),
                children=lambda index, call, reply: self._compose.on_call(by_index[index], call, reply),
                setup_timeout=definition.limits.setup_timeout,
                inputs=definition.limits.inputs,
                on_event=lambda event: _streams.on_event(by_index[event[1]], event),
                # Only a generator's caller can leave before its call ends (it closes its stream).
                on_stoppable=(lambda stop: _streams.stoppable(by_index, stop)) if definition.streams else None,
            )
        )

    def _started(self, invocation: Invocation) -> bool:
        """Starts an invocation once (a held or retried one is already started); False if it was cancelled."""
        if invocation.begun:
            return True
        if invocation.sink.start():
            invocation.begun = True
            return True
        invocation.sink.drop()
        self._release_gate(invocation)
        return False

    def _still_wanted(self, invocation: Invocation) -> bool:
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
        wanted = _keepalive.workers_wanted(self._in_flight, self._leases.wanted()[1], self._zone_floor, cluster.maximum)
        if wanted > self._requested_workers:
            self._requested_workers = wanted
            cluster.scale(wanted)

    def _on_outcome(self, invocation: Invocation, outcome: Outcome) -> None:
        retry = should_retry(invocation, outcome)
        with self._lock:
            self._in_flight -= 1
            self._last_activity = time.monotonic()
        if retry and not self._closed:
            self._launch([invocation])
            return
        self._finish(invocation, outcome)

    def _finish(self, invocation: Invocation, outcome: Outcome) -> None:
        self._compose.caller_ended(invocation, stopped=outcome.status != "ok")
        record, result, error = conclude(invocation, outcome)
        output = record.output
        self._store(record.function).add(record)
        for listener in [*self._listeners, *self._own_listeners]:
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

    def _release_gate(self, invocation: Invocation) -> None:
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
                self._queued.expire()
                self._note_workers(cluster.worker_count())
                if cluster.retires_when_idle:
                    self._maybe_retire(cluster)
                elif cluster.shares_owner_cluster:
                    self._lease.renew(cluster, self._in_flight, self.maximum)
            except Exception:  # the cluster is going away under us; the next tick or shutdown settles it
                if self._stop.is_set():
                    return

    def adopt(self, records: Sequence[InvocationRecord]) -> None:
        """Keep records of invocations another process ran (a kernel's server: HTTP and triggers) as this
        platform's: stats, cards and listeners see them; the durable log has them already."""
        for record in records:
            self._store(record.function).add(record)
            for listener in self._listeners:
                with contextlib.suppress(Exception):  # an observer's bug must not stop the others
                    listener(record)

    def add_listener(self, listener: Callable[[InvocationRecord], None], adopted: bool = True) -> None:
        """Call `listener` with every finished invocation's record (from a platform thread); with `adopted` False,
        only those this platform ran, not those adopted from another process (which reports them itself)."""
        if adopted:
            self._listeners = [*self._listeners, listener]
        else:
            self._own_listeners = [*self._own_listeners, listener]

    def remove_listener(self, listener: Callable[[InvocationRecord], None]) -> None:
        self._listeners = [known for known in self._listeners if known is not listener]
        self._own_listeners = [known for known in self._own_listeners if known is not listener]

    @property
    def tracing(self) -> Tracing | None:
        """Where this platform's invocations go as OpenTelemetry spans (faas.tracing.otlp-endpoint); None: nowhere."""
        return self._tracing

    def use_tracing(self, tracing: Tracing | None) -> None:
        """Send each invocation this platform runs as a span to `tracing` from now on (None: stop); the one
        replaced is flushed and closed."""
        previous, self._tracing = self._tracing, tracing
        if previous is not None:
            self.remove_listener(previous.observe)
            previous.close()
        if tracing is not None:
            self.add_listener(tracing.observe, adopted=False)

    # -- kernels sharing this platform's cluster -----------------------------------------------------

    def note_lease(self, owner: str, busy: bool, wanted: int) -> dict[str, Any]:
        """A kernel using this platform's cluster reports its work; refused (ok False) while workers retire."""
        with self._lock:
            if self._retiring:
                return {"ok": False, "retirements": self._retirements}
            now = time.monotonic()
            self._leases.note(owner, busy, wanted, now)
            self._last_activity = now
            self._scale_for_demand()
            return {"ok": True, "retirements": self._retirements}

    def _activity(self) -> _keepalive.Activity:
        """A snapshot of the work here and on sharing kernels, for the keep-alive policy (under the lock)."""
        remote_busy, remote_wanted = self._leases.wanted()
        held, now = bool(self._held), time.monotonic()
        return _keepalive.Activity(
            self._in_flight, held, self._retiring, remote_busy, remote_wanted, self._last_activity, now
        )

    def _keepalive_expired(self) -> bool:
        return _keepalive.idle_expired(self._last_activity, time.monotonic(), _idle_timeout())

    def demand(self) -> int:
        """Workers wanted now: the most asked for since the platform was last idle, until the keep-alive ends."""
        with self._lock:
            activity = self._activity()
            return _keepalive.wanted_now(
                activity, self._requested_workers, self._zone_floor, self.maximum, _idle_timeout()
            )

    def begin_retire(self) -> bool:
        """Start holding new invocations, if nothing is in flight and the keep-alive has passed."""
        with self._lock:
            if not _keepalive.may_retire(self._activity(), _idle_timeout()):
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

    def _launch_or_fail(self, invocations: list[Invocation]) -> None:
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


def _idle_timeout() -> float | None:
    """faas.cluster.idle-timeout, or None while it is misconfigured: then the keep-alive never ends."""
    try:
        return _config.idle_timeout()
    except ConfigError:
        return None


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
    """The process's platform, created on first use; never in a sandbox, nor a process started from one."""
    global _platform
    if in_sandbox():
        raise refuse_platform()
    with _platform_lock:
        if _platform is None or _platform._closed:
            _platform = Platform()
        platform = _platform
    return platform.start() if start else platform


def calling() -> Platform | CallerPlatform:
    """Where this process's calls go: its own platform, or inside a sandbox, the platform that runs it."""
    if in_sandbox():
        return CallerPlatform()
    return current()


@atexit.register
def _shutdown_at_exit() -> None:
    if _platform is not None:
        _platform.shutdown()
