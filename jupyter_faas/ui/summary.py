"""The figures the views show, as plain Python read from the platform's records: one function, or the platform."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, TypedDict, cast

from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.record.calltree import WaterfallRow, tree_cost
from jupyter_faas.ui.figures import latency_histogram

if TYPE_CHECKING:
    from jupyter_faas.dispatch.platform import Platform
    from jupyter_faas.record.records import InvocationRecord

# Lines of the newest invocation's output that the card shows.
OUTPUT_LINES = 8


class LastError(TypedDict):
    type: str
    message: str | None
    id: str


class FunctionStats(TypedDict):
    """What `Platform.stats(name)` returns."""

    invocations: int
    errors: int
    cold_starts: int
    gb_seconds: float
    cost_usd: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    peak_memory_p50: float | None
    peak_memory_max: int | None
    last_error: LastError | None


class FunctionRow(FunctionStats):
    """One function in the dashboard's table."""

    name: str


class CardHeader(TypedDict):
    name: str
    version: str
    signature: str
    limits: str


class LastOutput(TypedDict):
    id: str
    lines: list[str]
    hidden: int


class CallTree(TypedDict):
    """The newest invocation that made calls: its waterfall (itself first), and what the whole tree cost."""

    id: str
    calls: list[WaterfallRow]
    tree_cost_usd: float


class FunctionSummary(FunctionStats, CardHeader):
    """A function card's figures."""

    histogram: list[int]
    latency_range: tuple[float, float]
    triggers: list[str]
    last_output: LastOutput | None
    call_tree: CallTree | None


class CostSummary(TypedDict):
    period_s: float
    invocations: int
    serverless_usd: float
    always_on_usd: float
    idle_fraction: float
    break_even_per_hour: float | None
    savings_usd: float


class PlatformSummary(TypedDict):
    """The dashboard's figures."""

    platform: str
    started: bool
    mode: str | None
    workers: int
    maximum: int
    idle_timeout: float
    scale_to_zero_in: float | None
    scale_events: list[tuple[float, int]]
    dashboard_link: str | None
    functions: list[FunctionRow]
    cost: CostSummary
    now: float


class CardSubject(Protocol):
    """What a function card shows of a function: its header facts, read once; the rest comes from the platform."""

    def card_header(self) -> dict[str, str]:
        """ "name", "version", "signature" and "limits", as text."""
        ...

    def card_triggers(self) -> list[str]:
        """What fires it besides calls, as text: "every 30 s"; [] for none."""
        ...


class Reading:
    """The platform as one tick sees it: each function's figures are read once, however many views show them."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._stats: dict[str, FunctionStats] = {}
        self._latencies: dict[str, list[float]] = {}

    def stats(self, name: str) -> FunctionStats:
        if name not in self._stats:
            # Platform.stats is typed dict[str, Any]; FunctionStats names the keys it returns.
            self._stats[name] = cast("FunctionStats", self.platform.stats(name))
        return self._stats[name]

    def latencies(self, name: str) -> list[float]:
        if name not in self._latencies:
            self._latencies[name] = self.platform.latencies(name)
        return self._latencies[name]


def current_reading() -> Reading:
    """The running platform read now, without starting one."""
    return Reading(_platform.current(start=False))


def card_header(fn: CardSubject) -> CardHeader:
    h = fn.card_header()
    return {"name": h["name"], "version": h["version"], "signature": h["signature"], "limits": h["limits"]}


def last_output(newest: list[InvocationRecord]) -> LastOutput | None:
    """The tail of the newest invocation's output, if it wrote any."""
    if not newest or not newest[-1].output:
        return None
    lines = newest[-1].output.splitlines()
    return {"id": newest[-1].id, "lines": lines[-OUTPUT_LINES:], "hidden": max(0, len(lines) - OUTPUT_LINES)}


def newest_call_tree(platform: Platform, newest: list[InvocationRecord]) -> CallTree | None:
    """The call tree of the newest invocation, if it made any calls."""
    if not newest or not platform.children(newest[-1].id):
        return None
    rows = platform.call_tree(newest[-1].id)
    return {"id": newest[-1].id, "calls": rows, "tree_cost_usd": tree_cost(rows)}


def read_function(header: CardHeader, reading: Reading, triggers: list[str]) -> FunctionSummary:
    name = header["name"]
    counts, low, high = latency_histogram(reading.latencies(name))
    newest = reading.platform.recent(name, 1)
    return {
        **header,
        **reading.stats(name),
        "histogram": counts,
        "latency_range": (low, high),
        "triggers": triggers,
        "last_output": last_output(newest),
        "call_tree": newest_call_tree(reading.platform, newest),
    }


def function_summary(fn: CardSubject) -> FunctionSummary:
    """A function's card figures as plain Python: its header, `stats()`, and the latency histogram."""
    return read_function(card_header(fn), current_reading(), fn.card_triggers())


def platform_summary(reading: Reading) -> PlatformSummary:
    """The dashboard's figures: workers, scale to zero, scale events, every function's stats, and cost."""
    p = reading.platform
    link = None
    if p.started:
        try:
            link = p.dashboard_link
        except Exception:  # shut down while we looked; the next refresh shows it
            link = None
    comparison = p.cost_comparison()
    return {
        "platform": repr(p),
        "started": p.started,
        "mode": p.mode,
        "workers": p.workers,
        "maximum": p.maximum,
        "idle_timeout": p.idle_timeout,
        "scale_to_zero_in": p.seconds_to_scale_to_zero(),
        "scale_events": p.scale_events,
        "dashboard_link": link,
        "functions": [{"name": name, **reading.stats(name)} for name in p.function_names()],
        "cost": {
            "period_s": comparison.period_s,
            "invocations": comparison.invocations,
            "serverless_usd": comparison.serverless_usd,
            "always_on_usd": comparison.always_on_usd,
            "idle_fraction": comparison.idle_fraction,
            "break_even_per_hour": comparison.break_even_per_hour,
            "savings_usd": comparison.savings_usd,
        },
        "now": time.time(),
    }
