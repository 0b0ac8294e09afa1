"""The views' figures as HTML and SVG, for the widgets: the card's table, histogram and error; the dashboard's chart."""

from __future__ import annotations

import math

from jupyter_faas.ui.format import (
    COLUMNS,
    clock,
    cost_line,
    duration,
    error_line,
    escape,
    fixed,
    function_row,
    memory,
    ms,
    scale_to_zero,
    usd,
)
from jupyter_faas.ui.summary import FunctionSummary, PlatformSummary

RED = "#c62828"
GREEN = "#2e7d32"
BLUE = "#1565c0"
MUTED = "#757575"
FONT = "font-size:12px;font-variant-numeric:tabular-nums;line-height:1.5"


def card_header_html(s: FunctionSummary) -> str:
    runs = " · ".join(s["triggers"])
    return (
        f'<div style="{FONT}"><b style="font-size:14px">{escape(s["signature"])}</b> '
        f'<span style="color:{MUTED}">version {escape(s["version"])} · {escape(s["limits"])}</span>'
        + (f'<br><span style="color:{MUTED}">runs {escape(runs)}</span>' if runs else "")
        + "</div>"
    )


def output_html(s: FunctionSummary) -> str:
    last = s["last_output"]
    if last is None:
        return ""
    above = f" · {last['hidden']:,} lines above: {s['name']}.logs()" if last["hidden"] else ""
    text = escape("\n".join(last["lines"]))
    return (
        f'<div style="{FONT};color:{MUTED}">last output · {escape(last["id"])}{escape(above)}</div>'
        f'<pre style="margin:2px 0;max-height:10em;overflow:auto;font-size:12px">{text}</pre>'
    )


# The waterfall's bar area, in pixels; names take the column before it.
WATERFALL_WIDTH = 240
_STATUS_COLOURS = {"ok": GREEN, "error": RED, "timeout": RED, "memory": RED}


def call_tree_html(s: FunctionSummary) -> str:
    """The newest call tree as a waterfall: each call a bar from its start, as long as it ran, coloured by status."""
    tree = s["call_tree"]
    if tree is None:
        return ""
    rows = tree["calls"]
    span = max((row["offset_ms"] + (row["duration_ms"] or 0.0) for row in rows), default=0.0) or 1.0
    lines = []
    for row in rows:
        left = WATERFALL_WIDTH * row["offset_ms"] / span
        width = max(1.0, WATERFALL_WIDTH * (row["duration_ms"] or 0.0) / span)
        colour = _STATUS_COLOURS.get(row["status"], MUTED)
        lines.append(
            f'<tr><td style="padding-left:{12 * row["depth"]}px">{escape(row["function"])}</td>'
            f'<td><div style="position:relative;width:{WATERFALL_WIDTH}px;height:10px">'
            f'<div style="position:absolute;left:{left:.1f}px;width:{width:.1f}px;height:10px;background:{colour}">'
            f"</div></div></td>"
            f'<td style="color:{MUTED}">+{escape(ms(row["offset_ms"]))} · {escape(ms(row["duration_ms"]))} · '
            f"{escape(row['status'])}</td></tr>"
        )
    return (
        f'<div style="{FONT}"><span style="color:{MUTED}">calls of {escape(tree["id"])} · '
        f"{len(rows) - 1:,} below it · whole tree {escape(usd(tree['tree_cost_usd']))}</span>"
        f'<table style="border-collapse:collapse">{"".join(lines)}</table></div>'
    )


def _figure_cells(pairs: list[tuple[str, str, str]]) -> str:
    return "".join(f"<th>{escape(label)}</th><td{style}>{escape(value)}</td>" for label, value, style in pairs)


def card_figures_html(s: FunctionSummary) -> str:
    red = f' style="color:{RED}"' if s["errors"] else ""
    rows = [
        [
            ("invocations", f"{s['invocations']:,}", ""),
            ("errors", f"{s['errors']:,}", red),
            ("cold starts", f"{s['cold_starts']:,}", ""),
        ],
        [("p50", ms(s["p50_ms"]), ""), ("p95", ms(s["p95_ms"]), ""), ("p99", ms(s["p99_ms"]), "")],
        [
            ("GB-seconds", fixed(s["gb_seconds"]), ""),
            ("cost", usd(s["cost_usd"]), ""),
            ("peak memory", memory(s), ""),
        ],
    ]
    body = "".join(f"<tr>{_figure_cells(row)}</tr>" for row in rows)
    return (
        f'<table style="{FONT};border-collapse:collapse;text-align:left" cellpadding="2">{body}</table>'
        "<style>.faas-view th{font-weight:normal;color:#757575;padding-right:4px}"
        ".faas-view td{padding-right:14px}</style>"
    )


def histogram_svg(s: FunctionSummary) -> str:
    counts = s["histogram"]
    if not counts:
        return f'<div style="{FONT};color:{MUTED}">latency histogram: no invocations yet</div>'
    width, height, top_pad, bottom = 320, 56, 4, 14
    low, high = s["latency_range"]
    log_low = math.log10(max(low, 1e-3))
    span = math.log10(max(high, 1e-3)) - log_low
    top = max(counts)
    step = width / len(counts)
    edges = [10 ** (log_low + span * i / len(counts)) for i in range(len(counts) + 1)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom}" '
        f'viewBox="0 0 {width} {height + bottom}" role="img" aria-label="latency histogram">'
    ]
    for i, count in enumerate(counts):
        if not count:
            continue
        bar = max(1.0, (height - top_pad) * count / top)
        parts.append(
            f'<rect x="{i * step:.1f}" y="{height - bar:.1f}" width="{max(step - 1, 1):.1f}" height="{bar:.1f}" '
            f'fill="{BLUE}"><title>{count:,} between {escape(ms(edges[i]))} and {escape(ms(edges[i + 1]))}'
            "</title></rect>"
        )
    for label, value in (("p50", s["p50_ms"]), ("p95", s["p95_ms"]), ("p99", s["p99_ms"])):
        if value is None:
            continue
        x = 0.0 if span <= 0 else (math.log10(max(value, 1e-3)) - log_low) / span * width
        x = min(max(x, 0.5), width - 0.5)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="{RED}" stroke-dasharray="2,2">'
            f"<title>{label} {escape(ms(value))}</title></line>"
        )
    parts.append(
        f'<text x="0" y="{height + bottom - 2}" font-size="10" fill="{MUTED}">{escape(ms(low))}</text>'
        f'<text x="{width / 2:.0f}" y="{height + bottom - 2}" font-size="10" fill="{MUTED}" text-anchor="middle">'
        f"latency, log scale; dashed: p50 p95 p99</text>"
        f'<text x="{width}" y="{height + bottom - 2}" font-size="10" fill="{MUTED}" text-anchor="end">'
        f"{escape(ms(high))}</text></svg>"
    )
    return "".join(parts)


def error_html(s: FunctionSummary) -> str:
    error, last = error_line(s), s["last_error"]
    if error is None or last is None:
        return f'<div style="{FONT};color:{MUTED}">no errors</div>'
    ident = last["id"]
    return f'<div style="{FONT};color:{RED}" title="invocation {escape(ident)}"><b>last error</b> {escape(error)}</div>'


def workers_svg(s: PlatformSummary) -> str:
    events = s["scale_events"]
    if not events:
        return f'<div style="{FONT};color:{MUTED}">worker count: not started</div>'
    width, height, left, top_pad, bottom = 480, 90, 22, 6, 28
    start = events[0][0]
    end = max(s["now"], events[-1][0] + 1e-3)
    span = end - start
    highest = max(s["maximum"], max(n for _, n in events), 1)
    plot = width - left - 4

    def x(t: float) -> float:
        return left + (t - start) / span * plot

    def y(n: int) -> float:
        return top_pad + (height - top_pad) * (1 - n / highest)

    path = [f"M{x(start):.1f},{y(events[0][1]):.1f}"]
    marks = []
    previous = events[0][1]
    for t, n in events[1:]:
        path.append(f"H{x(t):.1f}V{y(n):.1f}")
        tip = f"<title>{clock(t)}: {n} worker{'s' if n != 1 else ''}</title>"
        if n > previous:
            marks.append(f'<path d="M{x(t):.1f},{y(n) - 6:.1f}l4,7h-8z" fill="{GREEN}">{tip}</path>')
        elif n == 0:
            marks.append(f'<circle cx="{x(t):.1f}" cy="{y(0):.1f}" r="3.5" fill="{RED}">{tip}</circle>')
        previous = n
    path.append(f"H{x(end):.1f}")
    label_y = height + 12
    return "".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom}" '
            f'viewBox="0 0 {width} {height + bottom}" role="img" aria-label="workers over time">',
            f'<line x1="{left}" x2="{width - 4}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#e0e0e0"/>',
            f'<line x1="{left}" x2="{width - 4}" y1="{y(highest):.1f}" y2="{y(highest):.1f}" stroke="#e0e0e0" '
            'stroke-dasharray="3,3"/>',
            f'<text x="{left - 4}" y="{y(0) + 4:.1f}" font-size="10" fill="{MUTED}" text-anchor="end">0</text>',
            f'<text x="{left - 4}" y="{y(highest) + 4:.1f}" font-size="10" fill="{MUTED}" text-anchor="end">'
            f"{highest}</text>",
            f'<path d="{"".join(path)}" fill="none" stroke="{BLUE}" stroke-width="2"/>',
            *marks,
            f'<text x="{left}" y="{label_y}" font-size="10" fill="{MUTED}">{clock(start)}</text>',
            f'<text x="{width - 4}" y="{label_y}" font-size="10" fill="{MUTED}" text-anchor="end">now</text>',
            f'<text x="{left}" y="{label_y + 13}" font-size="10" fill="{MUTED}">workers over time · '
            f'<tspan fill="{GREEN}">▲</tspan> scale up · <tspan fill="{RED}">●</tspan> scale to zero</text>',
            "</svg>",
        ]
    )


def table_html(s: PlatformSummary) -> str:
    if not s["functions"]:
        return f'<div style="{FONT};color:{MUTED}">no functions yet</div>'
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    rows = []
    for f in s["functions"]:
        cells = function_row(f)
        error = error_line(f)
        cells_html = [f"<td><b>{escape(cells[0])}</b></td>"]
        cells_html += [f'<td style="text-align:right">{escape(c)}</td>' for c in cells[1:-1]]
        tip = f' title="{escape(error)}"' if error else ""
        cells_html.append(f'<td style="color:{RED}"{tip}>{escape(cells[-1])}</td>')
        rows.append(f"<tr>{''.join(cells_html)}</tr>")
    return (
        f'<table style="{FONT};border-collapse:collapse" cellpadding="3"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def dashboard_header_html(s: PlatformSummary) -> str:
    link = s["dashboard_link"]
    link_html = f' · <a href="{escape(link)}" target="_blank">Dask dashboard</a>' if link else ""
    return (
        f'<div style="{FONT}"><b style="font-size:14px">jupyter-faas platform</b> '
        f'<span style="color:{MUTED}">{escape(s["mode"] or "not started")}</span><br>'
        f"workers <b>{s['workers']} / {s['maximum']}</b> · idle-timeout {escape(duration(s['idle_timeout']))} · "
        f"{escape(scale_to_zero(s))}{link_html}</div>"
    )


def cost_html(s: PlatformSummary) -> str:
    return f'<div style="{FONT}"><b>cost</b> {escape(cost_line(s["cost"]))}</div>'
