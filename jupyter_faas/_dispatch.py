"""The transport seam: how one invocation attempt reaches a worker and how its answer comes back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from distributed import Client, KilledWorker

from jupyter_faas import _invoker


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at running an invocation; a retry is a new attempt with a new key."""

    key: str
    name: str
    version: str
    package: tuple[bytes, str, str, bool]
    args_bytes: bytes
    timeout: float
    memory: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's answer to an attempt, or the news that no answer will come."""

    status: str  # "ok", "error", "timeout", "memory" or "lost"
    value: bytes = b""
    started: float | None = None
    finished: float | None = None
    fresh: bool = False
    peak_memory: int | None = None
    error: tuple[str, str, str, bytes | None] | None = None
    worker: str | None = None
    worker_started: float | None = None


class Dispatcher(Protocol):
    def send(self, attempt: Attempt, on_outcome: Callable[[Outcome], None]) -> None: ...

    def close(self) -> None: ...


class DaskTaskDispatcher:
    """Each attempt is one Dask task; the scheduler places it and the worker's sandbox runs it."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def send(self, attempt: Attempt, on_outcome: Callable[[Outcome], None]) -> None:
        future = self._client.submit(
            _invoker.execute,
            attempt.name,
            attempt.version,
            attempt.package,
            attempt.args_bytes,
            attempt.timeout,
            attempt.memory,
            key=attempt.key,
            pure=False,
            retries=0,
        )
        future.add_done_callback(lambda done: on_outcome(self._outcome(done)))

    @staticmethod
    def _outcome(future: Any) -> Outcome:
        try:
            if future.status == "finished":
                answer, worker, worker_started = future.result()
                status, value, started, finished, fresh, peak, error = answer
                return Outcome(status, value, started, finished, fresh, peak, error, worker, worker_started)
            exception = future.exception()
        except Exception as e:  # the future was lost with its client or scheduler
            exception = e
        finally:
            # A held result pins its worker and blocks scale-down.
            future.release()
        if isinstance(exception, KilledWorker):
            message = f"the worker running it was lost: {exception}"
        else:
            message = f"the invocation was lost in transit: {type(exception).__name__}: {exception}"
        return Outcome("lost", error=("WorkerLost", message, "", None))

    def close(self) -> None:
        pass
