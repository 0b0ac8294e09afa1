"""Formatters shared by the text and the HTML renderers: times, money, memory, and the summaries' phrases."""

from __future__ import annotations

import html
import math
import time

from dask.utils import format_bytes

from jupyter_faas.ui.summary import CostSummary, FunctionRow, FunctionStats, PlatformSummary

# The dashboard's function table, as text and as HTML.
COLUMNS = ("function", "invocations", "errors", "cold starts", "p50", "p95", "p99", "GB-seconds", "cost",
           "peak memory", "last error")  # fmt: skip


def fixed(value: float, figures: int = 3) -> str:
    """About `figures` significant digits without an exponent: costs are often millionths of a dollar."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (figures - 1):
        return f"{value:,.0f}"
    digits = figures - 1 - math.floor(math.log10(abs(value)))
    return f"{value:,.{digits}f}"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{fixed(value)} ms" if value < 1000 else f"{fixed(value / 1000)} s"


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${fixed(value)}"


def peak(value: float | None) -> str:
    # Measured peaks, unlike limits, are rarely round: 15.75 MiB reads better than 16128KiB.
    return "-" if value is None else format_bytes(int(value))


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def clock(unix_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def escape(value: object) -> str:
    return html.escape(str(value))


def memory(summary: FunctionStats) -> str:
    if summary["peak_memory_max"] is None:
        return "-"
    return f"{peak(summary['peak_memory_p50'])} p50, {peak(summary['peak_memory_max'])} max"


def error_line(summary: FunctionStats, limit: int = 200) -> str | None:
    """The last error as "Type: message", cut at `limit` characters; None without one."""
    error = summary["last_error"]
    if error is None:
        return None
    message = error["message"] or ""
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{error['type']}: {message}" if message else str(error["type"])


def scale_to_zero(s: PlatformSummary) -> str:
    if not s["started"]:
        return "not started"
    if s["workers"] == 0:
        return "at zero workers"
    if s["scale_to_zero_in"] is not None:
        return f"scales to zero in {math.ceil(s['scale_to_zero_in'])} s"
    if s["mode"] != "embedded":
        return "the cluster scales itself"
    return "busy: the countdown starts when the work ends"


def cost_line(c: CostSummary) -> str:
    even = c["break_even_per_hour"]
    even_text = "no invocations yet" if even is None else f"{fixed(even)} invocations/hour"
    return (
        f"pay-per-use {usd(c['serverless_usd'])} vs always-on {usd(c['always_on_usd'])} over "
        f"{duration(c['period_s'])} · idle {c['idle_fraction']:.1%} · break-even at {even_text}"
    )


def function_row(f: FunctionRow) -> list[str]:
    """A function's cells in the dashboard's table, under COLUMNS."""
    return [
        f["name"], f"{f['invocations']:,}", f"{f['errors']:,}", f"{f['cold_starts']:,}", ms(f["p50_ms"]),
        ms(f["p95_ms"]), ms(f["p99_ms"]), fixed(f["gb_seconds"]), usd(f["cost_usd"]), memory(f),
        "" if f["last_error"] is None else str(f["last_error"]["type"]),
    ]  # fmt: skip
