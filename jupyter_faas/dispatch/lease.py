"""Both ends of the kernel-server lease protocol: a kernel on its server's cluster keeps its workers up."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from jupyter_faas.dispatch.cluster import ClusterHandle
from jupyter_faas.dispatch.transport import DirectDispatcher

__all__ = ["LEASE_RENEW", "LEASE_TTL", "KernelLease", "Leases"]

# A kernel renews its lease this often while it runs invocations on its server's cluster; a lease not
# renewed for LEASE_TTL is from a kernel that died, and no longer keeps workers up.
LEASE_RENEW = 0.5
LEASE_TTL = 10.0


@dataclass(slots=True)
class _Lease:
    """What a kernel sharing this platform's cluster last said: whether it runs invocations, and how many."""

    busy: bool
    wanted: int
    seen: float


class Leases:
    """Server side: the leases of the kernels sharing this platform's cluster (the caller holds its lock)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}

    def note(self, owner: str, busy: bool, wanted: int, now: float) -> None:
        self._leases[owner] = _Lease(bool(busy), max(0, int(wanted)), now)

    def wanted(self) -> tuple[bool, int]:
        """(whether a live kernel is running invocations here, the workers those kernels want)."""
        now = time.monotonic()
        live = [lease for lease in self._leases.values() if lease.busy and now - lease.seen < LEASE_TTL]
        return bool(live), sum(lease.wanted for lease in live)


class KernelLease:
    """Kernel side: tells the server about this kernel's work, so its keep-alive spares the workers under it."""

    def __init__(self, lock: threading.RLock, stop: threading.Event) -> None:
        self._lock = lock
        self._stop = stop
        # When this platform last told its server about its work, and what it said.
        self.sent = 0.0
        self.busy = False
        self._owner_retirements: int | None = None

    def renew(self, cluster: ClusterHandle, in_flight: int, maximum: int) -> None:
        """Keep the server's keep-alive from retiring workers under this kernel's invocations."""
        with self._lock:
            busy = in_flight > 0
            due = time.monotonic() - self.sent >= LEASE_RENEW
            if not (busy and due) and not (self.busy and not busy):
                return
            self.sent, self.busy = time.monotonic(), busy
        cluster.lease(busy, min(in_flight, maximum), wait=False)

    def check_in(self, cluster: ClusterHandle, dispatcher: DirectDispatcher | None) -> None:
        """On the way from idle to busy: wait out a scale-down the server has begun."""
        if time.monotonic() - self.sent < LEASE_RENEW:
            return
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = cluster.lease(True, 1, wait=True)
            except Exception:  # no answer: the invocation itself will report what is wrong
                return
            if answer.get("retirements") != self._owner_retirements and dispatcher is not None:
                # The server retired every worker since we last looked: our links point at closed workers.
                dispatcher.forget_workers()
                self._owner_retirements = answer.get("retirements")
            if answer.get("ok") or time.monotonic() > deadline:
                break
            self._stop.wait(0.02)
        with self._lock:
            self.sent, self.busy = time.monotonic(), True
