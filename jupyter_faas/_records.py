"""Invocation records and the statistics computed from them."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


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
    attempts: int
    peak_memory: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class RecordStore:
    """The records of one function: a bounded window in memory plus running totals."""

    def __init__(self, max_records: int) -> None:
        self._records: deque[InvocationRecord] = deque(maxlen=max_records)
        self._lock = threading.Lock()
        self._invocations = 0
        self._errors = 0
        self._cold_starts = 0

    def add(self, record: InvocationRecord) -> None:
        with self._lock:
            self._records.append(record)
            self._invocations += 1
            self._errors += record.status != "ok"
            self._cold_starts += record.cold_start

    def records(self) -> list[InvocationRecord]:
        with self._lock:
            return list(self._records)

    def stats(self) -> dict[str, Any]:
        """Totals since definition; latency percentiles over the records still kept."""
        with self._lock:
            latencies = sorted(r.latency_ms for r in self._records)
            totals = {
                "invocations": self._invocations,
                "errors": self._errors,
                "cold_starts": self._cold_starts,
            }
        return {
            **totals,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
        }
