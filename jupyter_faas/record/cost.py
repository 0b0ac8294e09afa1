"""What invocations cost on a pay-per-use platform, and what an always-on server would have cost instead."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jupyter_faas.config import Pricing

# Billing counts memory in GB of 1024 MB, as AWS Lambda does: 1,024 MB for one second is one GB-second.
_BYTES_PER_GB = 2**30


def billed_ms(duration_ms: float) -> int:
    """The billed duration: rounded up to the next whole millisecond, and at least 1 ms."""
    return max(1, math.ceil(duration_ms - 1e-9))


def gb_seconds(memory_bytes: int, duration_ms: float) -> float:
    return memory_bytes / _BYTES_PER_GB * billed_ms(duration_ms) / 1000


def invocation_cost(memory_bytes: int, duration_ms: float, pricing: Pricing) -> float:
    """USD for one invocation: GB-seconds at the GB-second price, plus the request price."""
    return gb_seconds(memory_bytes, duration_ms) * pricing.gb_second + pricing.request


@dataclass(frozen=True)
class Comparison:
    """Pay-per-use against an always-on server of the cluster's maximum size, over one period."""

    period_s: float
    invocations: int
    serverless_usd: float
    always_on_usd: float
    busy_s: float
    capacity_s: float

    @property
    def idle_fraction(self) -> float:
        """Share of the always-on server's capacity that would have sat idle."""
        if self.capacity_s <= 0:
            return 1.0
        return max(0.0, 1.0 - self.busy_s / self.capacity_s)

    @property
    def break_even_per_hour(self) -> float | None:
        """Invocations per hour at which pay-per-use would cost as much as the server (at this mix)."""
        if self.invocations == 0 or self.serverless_usd <= 0:
            return None
        cost_per_invocation = self.serverless_usd / self.invocations
        server_per_hour = self.always_on_usd / (self.period_s / 3600) if self.period_s > 0 else 0.0
        return server_per_hour / cost_per_invocation

    @property
    def savings_usd(self) -> float:
        return self.always_on_usd - self.serverless_usd


def compare(
    invocations: int, gb_seconds_total: float, busy_s: float, period_s: float, slots: int, pricing: Pricing
) -> Comparison:
    """Pay-per-use for these totals against a server of `slots` invocations at once, priced per hour of the period."""
    period_s = max(period_s, 0.0)
    return Comparison(
        period_s=period_s,
        invocations=invocations,
        serverless_usd=gb_seconds_total * pricing.gb_second + invocations * pricing.request,
        always_on_usd=pricing.server_hour * period_s / 3600,
        busy_s=busy_s,
        capacity_s=period_s * max(slots, 1),
    )
