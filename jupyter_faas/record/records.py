"""Invocation records and the statistics computed from them."""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from jupyter_faas.config import Pricing
from jupyter_faas.record.cost import gb_seconds

# Error messages are kept in records up to this length.
MESSAGE_LIMIT = 500
# Output (print, stdout, stderr, logging) of one function's newest invocations kept in memory; older
# records keep theirs only in the durable log. 100,000 records of 64 KiB each would be 6 GiB.
OUTPUT_KEPT_BYTES = 16 * 2**20

# How an invocation ended, in its record: a lost worker or a failed setup is an "error".
RecordStatus = Literal["ok", "error", "timeout", "memory"]


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
    status: RecordStatus
    error: str | None
    message: str | None
    attempts: int
    peak_memory: int | None
    memory_limit: int
    # What made it run: "call" (from Python), "http", "schedule", "file" or "queue".
    trigger: str = "call"
    # What it printed or logged, cut at faas.log.max-output; "" for nothing, None once no longer kept in memory.
    output: str | None = ""
    # The invocation that made this call, and the top of its call tree; None for a call made from outside.
    parent: str | None = None
    root: str | None = None
    # Milliseconds a warm class's setup() took before this call (Lambda's "Init Duration"); None if it did not run.
    init_ms: float | None = None
    # A generator's: how many items it yielded, and the milliseconds from its start to the first (None: none).
    items: int | None = None
    first_item_ms: float | None = None

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
_ID = _FIELDS.index("id")
_OUTPUT = _FIELDS.index("output")
_PARENT = _FIELDS.index("parent")


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
        # Output of the newest records that have any, by id, up to OUTPUT_KEPT_BYTES; rows say only
        # whether they had output, so the window itself stays small.
        self._outputs: OrderedDict[str, str] = OrderedDict()
        self._output_size = 0
        # Bumped by every record, so a watcher can tell cheaply whether anything changed.
        self.revision = 0

    def add(self, record: InvocationRecord) -> None:
        row = _as_row(record)
        output = row[_OUTPUT]
        row = (*row[:_OUTPUT], bool(output), *row[_OUTPUT + 1 :])
        with self._lock:
            if len(self._records) == self._records.maxlen and self._records[0][_OUTPUT]:
                self._forget_output(self._records[0][_ID])
            self._records.append(row)
            if output:
                self._keep_output(record.id, output)
            self._invocations += 1
            self._cold_starts += record.cold_start
            if record.status != "ok":
                self._errors += 1
                self._last_error = record
            if record.duration_ms is not None:
                self._gb_seconds += record.gb_seconds
                self._busy_ms += record.duration_ms
            self.revision += 1

    def _keep_output(self, record_id: str, output: str) -> None:
        self._outputs[record_id] = output
        self._output_size += len(output)
        while self._output_size > OUTPUT_KEPT_BYTES and len(self._outputs) > 1:
            _, dropped = self._outputs.popitem(last=False)
            self._output_size -= len(dropped)

    def _forget_output(self, record_id: str) -> None:
        dropped = self._outputs.pop(record_id, None)
        if dropped is not None:
            self._output_size -= len(dropped)

    @staticmethod
    def _record(row: tuple[Any, ...], outputs: dict[str, str]) -> InvocationRecord:
        output = outputs.get(row[_ID]) if row[_OUTPUT] else ""
        values = (*row[:_OUTPUT], output, *row[_OUTPUT + 1 :])
        return InvocationRecord(*values)

    def records(self) -> list[InvocationRecord]:
        with self._lock:
            rows, outputs = list(self._records), dict(self._outputs)
        return [self._record(row, outputs) for row in rows]

    def last(self, count: int) -> list[InvocationRecord]:
        """The newest `count` records kept, oldest first."""
        with self._lock:
            size = len(self._records)
            rows = [self._records[i] for i in range(max(0, size - count), size)]
            outputs = {row[_ID]: self._outputs[row[_ID]] for row in rows if row[_ID] in self._outputs}
        return [self._record(row, outputs) for row in rows]

    def find(self, record_id: str) -> InvocationRecord | None:
        """The record with this id, if still kept."""
        with self._lock:
            for row in reversed(self._records):
                if row[_ID] == record_id:
                    return self._record(row, self._outputs)
        return None

    def children(self, parent_id: str) -> list[InvocationRecord]:
        """The kept records of calls that invocation `parent_id` made, oldest first."""
        with self._lock:
            return [self._record(row, self._outputs) for row in self._records if row[_PARENT] == parent_id]

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
