"""Invocation records and the statistics computed from them."""

from __future__ import annotations

import operator
import threading
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

from jupyter_faas._config import Pricing
from jupyter_faas._cost import gb_seconds

# Error messages are kept in records up to this length.
MESSAGE_LIMIT = 500


@dataclass(slots=True)
class InvocationRecord:
    """What happened to one invocation, from submission to its result or error."""

    id: str
    function: str
    version: str
    submitted: float
    started: float | None
    finished: float | None
    queued_ms: float | None
    cold_start: bool
    duration_ms: float | None
    latency_ms: float
    worker: str | None
    status: str
    error: str | None
    message: str | None
    attempts: int
    peak_memory: int | None
    memory_limit: int
    # What made it run: "call" (from Python), "http", "schedule", "file" or "queue".
    trigger: str = "call"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def gb_seconds(self) -> float:
        """What this invocation is billed for: its memory setting times its duration, rounded up to 1 ms."""
        return 0.0 if self.duration_ms is None else gb_seconds(self.memory_limit, self.duration_ms)


_FIELDS = tuple(field.name for field in fields(InvocationRecord))
_as_row = operator.attrgetter(*_FIELDS)
_LATENCY = _FIELDS.index("latency_ms")
_PEAK = _FIELDS.index("peak_memory")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class RecordStore:
    """The records of one function: a bounded window in memory plus running totals."""

    def __init__(self, max_records: int) -> None:
        # Kept as plain tuples of atoms, which the garbage collector stops tracking: a window of 100,000
        # record objects would make every full collection walk them all, a pause of tens of milliseconds.
        self._records: deque[tuple[Any, ...]] = deque(maxlen=max_records)
        self._lock = threading.Lock()
        self._invocations = 0
        self._errors = 0
        self._cold_starts = 0
        self._gb_seconds = 0.0
        self._busy_ms = 0.0
        self._last_error: InvocationRecord | None = None
        # Bumped by every record, so a watcher can tell cheaply whether anything changed.
        self.revision = 0

    def add(self, record: InvocationRecord) -> None:
        row = _as_row(record)
        with self._lock:
            self._records.append(row)
            self._invocations += 1
            self._cold_starts += record.cold_start
            if record.status != "ok":
                self._errors += 1
                self._last_error = record
            if record.duration_ms is not None:
                self._gb_seconds += record.gb_seconds
                self._busy_ms += record.duration_ms
            self.revision += 1

    def records(self) -> list[InvocationRecord]:
        with self._lock:
            rows = list(self._records)
        return [InvocationRecord(*row) for row in rows]

    def last(self, count: int) -> list[InvocationRecord]:
        """The newest `count` records kept, oldest first."""
        with self._lock:
            size = len(self._records)
            rows = [self._records[i] for i in range(max(0, size - count), size)]
        return [InvocationRecord(*row) for row in rows]

    def latencies(self) -> list[float]:
        """End-to-end latency (ms) of each record kept, oldest first."""
        with self._lock:
            return [row[_LATENCY] for row in self._records]

    def totals(self) -> tuple[int, float, float]:
        """(invocations, GB-seconds, busy seconds) since the function was defined."""
        with self._lock:
            return self._invocations, self._gb_seconds, self._busy_ms / 1000

    def stats(self, pricing: Pricing) -> dict[str, Any]:
        """Totals since definition; latency and memory percentiles over the records still kept."""
        with self._lock:
            latencies = sorted(row[_LATENCY] for row in self._records)
            peaks = sorted(row[_PEAK] for row in self._records if row[_PEAK] is not None)
            last = self._last_error
            totals = {
                "invocations": self._invocations,
                "errors": self._errors,
                "cold_starts": self._cold_starts,
                "gb_seconds": self._gb_seconds,
                "cost_usd": self._gb_seconds * pricing.gb_second + self._invocations * pricing.request,
            }
        return {
            **totals,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "peak_memory_p50": percentile(peaks, 50),
            "peak_memory_max": peaks[-1] if peaks else None,
            "last_error": None if last is None else {"type": last.error, "message": last.message, "id": last.id},
        }
