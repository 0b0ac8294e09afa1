"""The one platform object: it owns the cluster, dispatches invocations, retries them and records them."""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from jupyter_faas import _config
from jupyter_faas._cluster import ClusterHandle, connect
from jupyter_faas._definition import FunctionDefinition
from jupyter_faas._dispatch import Attempt, DaskTaskDispatcher, Dispatcher, Outcome
from jupyter_faas._errors import (
    FaasError,
    FaasMemoryError,
    FaasTimeout,
    RemoteError,
    WorkerLost,
    present,
)
from jupyter_faas._limits import format_size
from jupyter_faas._records import InvocationRecord, RecordStore

# Outcomes that count as a failure worth another attempt when retries remain.
_RETRIED = ("error", "lost")


@dataclass(eq=False)
class _Invocation:
    id: str
    definition: FunctionDefinition
    args_bytes: bytes
    future: Future
    submitted: float
    started_clock: float
    attempts: int = 0
    gate: _Gate | None = None


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
    error: BaseException | None = None
    if exc_bytes is not None:
        try:
            error = cloudpickle.loads(exc_bytes)
        except Exception:
            error = None
    if not isinstance(error, BaseException):
        error = RemoteError(type_name, message)
    return present(error, definition.name, outcome.worker, traceback_text)


class Platform:
    """Definition -> dispatch -> worker -> record, for every entry point in this process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cluster: ClusterHandle | None = None
        self._dispatcher: Dispatcher | None = None
        self._stores: dict[str, RecordStore] = {}
        self._gates: dict[str, _Gate] = {}
        self._in_flight = 0
        self._held: deque[_Invocation] = deque()
        self._retiring = False
        self._requested_workers = 0
        self._last_activity = time.monotonic()
        self._scale_events: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._controller: threading.Thread | None = None
        self._keys = itertools.count()
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._cluster is not None

    def start(self) -> Platform:
        with self._lock:
            if self._closed:
                raise FaasError("this platform was shut down; call jupyter_faas.platform() for a new one")
            if self._cluster is None:
                self._cluster = connect()
                self._dispatcher = DaskTaskDispatcher(self._cluster.client)
                self._note_workers(self._cluster.worker_count())
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
            waiting = list(self._held) + [i for gate in self._gates.values() for i in gate.waiting]
            self._held.clear()
            for gate in self._gates.values():
                gate.waiting.clear()
        self._stop.set()
        if self._controller is not None:
            self._controller.join(timeout=5)
        for invocation in waiting:
            if invocation.future.set_running_or_notify_cancel():
                invocation.future.set_exception(FaasError("the platform was shut down before this ran"))
        if cluster is not None:
            cluster.close()

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
        """The distributed.Client the platform dispatches through."""
        return self.start()._cluster.client  # type: ignore[union-attr]

    def records(self, name: str) -> list[InvocationRecord]:
        store = self._stores.get(name)
        return store.records() if store else []

    def stats(self, name: str) -> dict[str, Any]:
        return self._store(name).stats()

    def __repr__(self) -> str:
        if self._cluster is None:
            return "<jupyter_faas platform: not started>"
        return (
            f"<jupyter_faas platform: {self._cluster.mode} cluster at {self._cluster.scheduler_address}, "
            f"{self.workers}/{self.maximum} workers>"
        )

    # -- invoking ------------------------------------------------------------------------------------

    def _store(self, name: str) -> RecordStore:
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._stores[name] = RecordStore(_config.records_per_function())
            return store

    def invoke(self, definition: FunctionDefinition, args_bytes: bytes) -> Future:
        """Queue one invocation; the returned future ends with its result or its error."""
        self.start()
        invocation = _Invocation(
            id=uuid.uuid4().hex[:16],
            definition=definition,
            args_bytes=args_bytes,
            future=Future(),
            submitted=time.time(),
            started_clock=time.perf_counter(),
        )
        with self._lock:
            gate = self._gates.get(definition.name)
            if gate is None or gate.limit != definition.limits.concurrency:
                # A redefinition with another limit starts a new gate; calls in flight keep the old one.
                gate = self._gates[definition.name] = _Gate(definition.limits.concurrency)
            invocation.gate = gate
            admitted = gate.admit(invocation)
        if admitted:
            self._launch(invocation)
        return invocation.future

    def _launch(self, invocation: _Invocation) -> None:
        if invocation.attempts == 0 and not invocation.future.set_running_or_notify_cancel():
            self._release_gate(invocation)
            return
        with self._lock:
            if self._retiring:
                self._held.append(invocation)
                return
            self._in_flight += 1
            self._last_activity = time.monotonic()
            self._scale_for_demand()
        invocation.attempts += 1
        definition = invocation.definition
        attempt = Attempt(
            key=f"faas-{definition.name}-{invocation.id}-{invocation.attempts}",
            name=definition.name,
            version=definition.version,
            package=(definition.payload, definition.filename, definition.source, definition.reusable),
            args_bytes=invocation.args_bytes,
            timeout=definition.limits.timeout,
            memory=definition.limits.memory,
        )
        dispatcher = self._dispatcher
        if dispatcher is None:
            self._finish(invocation, Outcome("lost", error=("WorkerLost", "the platform was shut down", "", None)))
            return
        try:
            dispatcher.send(attempt, lambda outcome: self._on_outcome(invocation, outcome))
        except Exception as e:
            self._on_outcome(invocation, Outcome("lost", error=("WorkerLost", f"could not dispatch: {e}", "", None)))

    def _scale_for_demand(self) -> None:
        """Ask for min(demand, maximum) workers at once, instead of waiting for an adaptive tick."""
        cluster = self._cluster
        if cluster is None or not cluster.scales_on_demand:
            return
        wanted = min(self._in_flight, cluster.maximum)
        if wanted > self._requested_workers:
            self._requested_workers = wanted
            cluster.scale(wanted)

    def _on_outcome(self, invocation: _Invocation, outcome: Outcome) -> None:
        retry = outcome.status in _RETRIED and invocation.attempts <= invocation.definition.limits.retries
        with self._lock:
            self._in_flight -= 1
            self._last_activity = time.monotonic()
        if retry and not self._closed:
            self._launch(invocation)
            return
        self._finish(invocation, outcome)

    def _finish(self, invocation: _Invocation, outcome: Outcome) -> None:
        definition = invocation.definition
        latency_ms = (time.perf_counter() - invocation.started_clock) * 1000
        cold = outcome.fresh or (outcome.worker_started is not None and outcome.worker_started > invocation.submitted)
        error_name = None
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
        if error is not None:
            error_name = outcome.error[0] if outcome.error else type(error).__name__
        started, finished = outcome.started, outcome.finished
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
            status="error" if status == "lost" else status,
            error=error_name,
            attempts=invocation.attempts,
            peak_memory=outcome.peak_memory,
        )
        self._store(definition.name).add(record)
        self._release_gate(invocation)
        if error is None:
            invocation.future.set_result(result)
        else:
            invocation.future.set_exception(error)

    def _release_gate(self, invocation: _Invocation) -> None:
        gate = invocation.gate
        if gate is None:
            return
        with self._lock:
            following = gate.release()
        if following is not None:
            self._launch(following)

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
                self._note_workers(cluster.worker_count())
                if cluster.scales_on_demand:
                    self._maybe_retire(cluster)
            except Exception:  # the cluster is going away under us; the next tick or shutdown settles it
                if self._stop.is_set():
                    return

    def _maybe_retire(self, cluster: ClusterHandle) -> None:
        try:
            idle_timeout = _config.idle_timeout()
        except _config.ConfigError:
            return
        with self._lock:
            quiet = self._in_flight == 0 and not self._held
            expired = time.monotonic() - self._last_activity >= idle_timeout
            if not (quiet and expired and (self._requested_workers or cluster.worker_count())):
                return
            # From here new invocations wait in _held, so none can land on a worker being retired.
            self._retiring = True
        try:
            cluster.scale(0)
            cluster.wait_for_workers(0, timeout=30)
            self._note_workers(cluster.worker_count())
        finally:
            with self._lock:
                self._retiring = False
                self._requested_workers = 0
                held = list(self._held)
                self._held.clear()
            for invocation in held:
                self._launch(invocation)


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
