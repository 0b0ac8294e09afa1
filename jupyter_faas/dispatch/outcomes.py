"""A worker's Outcome turned into a retry, or an InvocationRecord and a result or error; a map's results."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import cloudpickle

from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.admission import Invocation
from jupyter_faas.dispatch.transport import Outcome, OutcomeStatus
from jupyter_faas.errors import FaasError, FaasMemoryError, FaasTimeout, RemoteError, WorkerLost, present
from jupyter_faas.record.records import MESSAGE_LIMIT, InvocationRecord, RecordStatus
from jupyter_faas.units import format_size
from jupyter_faas.worker.capture import Segments, cut_marker

__all__ = ["MAP_OUTPUT_LINES", "MapResults", "conclude", "on_stream", "rebuild_error", "should_retry"]

# Outcomes that count as a failure worth another attempt when retries remain.
_RETRIED: tuple[OutcomeStatus, ...] = ("error", "lost")
# How each outcome is recorded: a lost worker or a failed setup is an error in the records.
_RECORDED: dict[OutcomeStatus, RecordStatus] = {
    "ok": "ok", "error": "error", "timeout": "timeout", "memory": "memory", "lost": "error", "setup": "error",
}  # fmt: skip
# Lines of output a map keeps to show under it; the rest stays in the records.
MAP_OUTPUT_LINES = 20


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


def should_retry(invocation: Invocation, outcome: Outcome) -> bool:
    """A failure worth another attempt, while the function's retries last.

    Never once a generator's items have reached its caller: another attempt would send them again; nor once
    its caller has left.
    """
    if invocation.items or invocation.stop_requested:
        return False
    return outcome.status in _RETRIED and invocation.attempts <= invocation.definition.limits.retries


def rebuild_error(definition: FunctionDefinition, outcome: Outcome) -> BaseException:
    """The exception a failed outcome raises in the notebook, with the function's name and worker on it."""
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


def on_stream(invocation: Invocation, segments: Segments, dropped: int) -> None:
    """Output of a running invocation: kept for its record, and passed on to whoever watches it."""
    if invocation.output is None:
        invocation.output = []
    invocation.output.extend(segments)
    invocation.dropped = dropped
    with contextlib.suppress(Exception):  # a watcher's failure must not lose the invocation
        invocation.sink.stream(invocation.slot, segments)


def _final_output(invocation: Invocation, outcome: Outcome) -> str:
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
        on_stream(invocation, tail, dropped)
    segments = invocation.output
    invocation.output = None
    return "".join(text for _, text in segments) if segments else ""


def _first_item_ms(invocation: Invocation, started: float | None) -> float | None:
    if invocation.first_item is None or started is None:
        return None
    return max(0.0, (invocation.first_item - started) * 1000)


def conclude(invocation: Invocation, outcome: Outcome) -> tuple[InvocationRecord, Any, BaseException | None]:
    """The last attempt's outcome as the invocation's record, and the result or error its caller gets."""
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
        error = rebuild_error(definition, outcome)
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
        status=_RECORDED[status],
        error=None if error is None else (outcome.error[0] if outcome.error else type(error).__name__),
        message=None if error is None else str(error)[:MESSAGE_LIMIT],
        attempts=invocation.attempts,
        peak_memory=outcome.peak_memory,
        memory_limit=definition.limits.memory,
        trigger=invocation.trigger,
        output=_final_output(invocation, outcome),
        parent=invocation.parent,
        root=invocation.root,
        init_ms=invocation.init_ms,
        items=invocation.items if definition.streams else None,
        first_item_ms=_first_item_ms(invocation, started),
    )
    return record, result, error
