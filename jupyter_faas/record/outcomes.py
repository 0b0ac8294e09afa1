"""Outcomes of asynchronous invocations kept for polling, bounded by bytes: the oldest results go first."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

# The "status" of an asynchronous invocation, as GET /faas/invocations/{id} answers it: waiting, then how it ended.
PendingStatus = Literal["queued", "running"]
FailedStatus = Literal["error", "timeout", "memory"]
FinishedStatus = Literal["ok", FailedStatus]
AsyncStatus = Literal[PendingStatus, FinishedStatus]

# Invocations whose outcome (or the note that its result was dropped) can still be asked for.
MAX_KEPT = 10_000


@dataclass(frozen=True)
class Dropped:
    """What is left of an outcome whose result was dropped to stay within the byte budget."""

    function: str
    status: FinishedStatus
    size: int
    limit: int

    def message(self) -> str:
        return (
            f"the result ({self.size} bytes) is no longer kept: results of ?async=true invocations are kept "
            f"within faas.http.async-results-max-bytes ({self.limit} bytes), the oldest dropped first; "
            "call the function synchronously for results this large"
        )


def result_size(outcome: dict[str, Any]) -> int:
    """The bytes an outcome holds, as its JSON answer carries them."""
    return len(json.dumps(outcome, default=str))


class AsyncOutcomes:
    """Finished outcomes by invocation id: at most `limit()` bytes of them, and MAX_KEPT entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[dict[str, Any], int] | Dropped] = OrderedDict()
        self._bytes = 0

    def keep(self, invocation_id: str, outcome: dict[str, Any], limit: int) -> None:
        """Keep `outcome` (with "function" and "status"); one past the whole budget is dropped at once."""
        size = result_size(outcome)
        with self._lock:
            self._pop(invocation_id)
            if size > limit:
                self._kept[invocation_id] = Dropped(outcome["function"], outcome["status"], size, limit)
            else:
                while self._bytes + size > limit:
                    self._drop_oldest(limit)
                self._kept[invocation_id] = (outcome, size)
                self._bytes += size
            while len(self._kept) > MAX_KEPT:
                self._pop(next(iter(self._kept)))

    def _drop_oldest(self, limit: int) -> None:
        for key, kept in self._kept.items():
            if not isinstance(kept, Dropped):
                outcome, size = kept
                self._kept[key] = Dropped(outcome["function"], outcome["status"], size, limit)
                self._bytes -= size
                return
        raise AssertionError("bytes counted but no outcome kept")  # pragma: no cover

    def _pop(self, invocation_id: str) -> None:
        kept = self._kept.pop(invocation_id, None)
        if isinstance(kept, tuple):
            self._bytes -= kept[1]

    def get(self, invocation_id: str) -> dict[str, Any] | Dropped | None:
        with self._lock:
            kept = self._kept.get(invocation_id)
        return kept[0] if isinstance(kept, tuple) else kept

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes
