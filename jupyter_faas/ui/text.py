"""The views' figures as text, for a terminal or a front end without widgets."""

from __future__ import annotations

from jupyter_faas.ui import format as fmt
from jupyter_faas.ui.figures import sparkline
from jupyter_faas.ui.summary import (
    CallTree,
    CardSubject,
    FunctionSummary,
    LastOutput,
    PlatformSummary,
    current_reading,
    function_summary,
    platform_summary,
)

# The worker chart shows this many of the latest scale events as text.
TEXT_SCALE_EVENTS = 8


def card_text(s: FunctionSummary) -> str:
    latency = f"  latency p50 {fmt.ms(s['p50_ms'])} · p95 {fmt.ms(s['p95_ms'])} · p99 {fmt.ms(s['p99_ms'])}"
    if s["histogram"]:
        low, high = s["latency_range"]
        latency += f"   {fmt.ms(low)} |{sparkline(s['histogram'])}| {fmt.ms(high)}"
    error = fmt.error_line(s)
    return "\n".join(
        [
            f"{s['signature']} · version {s['version']} · {s['limits']}",
            f"  invocations {s['invocations']:,} · errors {s['errors']:,} · cold starts {s['cold_starts']:,}",
            latency,
            f"  GB-seconds {fmt.fixed(s['gb_seconds'])} · cost {fmt.usd(s['cost_usd'])} · peak memory {fmt.memory(s)}",
            f"  last error {error}" if error else "  no errors",
            *([f"  runs {' · '.join(s['triggers'])}"] if s["triggers"] else []),
            *_output_text(s["last_output"]),
            *call_tree_text(s["call_tree"]),
        ]
    )


def call_tree_text(tree: CallTree | None) -> list[str]:
    """The newest call tree, one call a line, indented by depth: when it started, how long it ran, how it ended."""
    if tree is None:
        return []
    rows = tree["calls"]
    header = f"  calls of {tree['id']} ({len(rows) - 1:,} below it, whole tree {fmt.usd(tree['tree_cost_usd'])}):"
    return [
        header,
        *(
            f"    {'  ' * row['depth']}{row['function']}  +{fmt.ms(row['offset_ms'])}  {fmt.ms(row['duration_ms'])}  "
            f"{row['status']}"
            for row in rows
        ),
    ]


def _output_text(last: LastOutput | None) -> list[str]:
    if last is None:
        return []
    above = f", {last['hidden']:,} lines above" if last["hidden"] else ""
    return [f"  last output ({last['id']}{above}):", *(f"    {line}" for line in last["lines"])]


def platform_text(s: PlatformSummary) -> str:
    lines = [
        s["platform"],
        f"  workers {s['workers']} / {s['maximum']} · idle-timeout {fmt.duration(s['idle_timeout'])} · "
        f"{fmt.scale_to_zero(s)}" + (f" · Dask dashboard {s['dashboard_link']}" if s["dashboard_link"] else ""),
    ]
    events = s["scale_events"]
    if events:
        shown = " → ".join(f"{fmt.clock(t)} {n}" for t, n in events[-TEXT_SCALE_EVENTS:])
        more = f"({len(events) - TEXT_SCALE_EVENTS} earlier) " if len(events) > TEXT_SCALE_EVENTS else ""
        lines.append(f"  worker count: {more}{shown}")
    lines.append(f"  cost: {fmt.cost_line(s['cost'])}")
    if not s["functions"]:
        lines.append("  no functions yet")
        return "\n".join(lines)
    rows = [list(fmt.COLUMNS), *(fmt.function_row(f) for f in s["functions"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(fmt.COLUMNS))]
    for row in rows:
        cells = [cell.ljust(width) if i in (0, len(row) - 1) else cell.rjust(width) for i, (cell, width) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def function_text(fn: CardSubject) -> str:
    """The card as text, for a terminal."""
    return card_text(function_summary(fn))


def dashboard_text() -> str:
    """The dashboard as text, without making a widget."""
    return platform_text(platform_summary(current_reading()))
