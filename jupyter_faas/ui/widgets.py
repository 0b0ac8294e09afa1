"""Live widgets for functions, the platform and long maps; the same figures as text without a widget front end."""

from __future__ import annotations

import bisect
import html
import logging
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import ipywidgets
from dask.utils import format_bytes
from IPython.display import display

from jupyter_faas.client import deploy as _deploy
from jupyter_faas.dispatch import platform as _platform

if TYPE_CHECKING:
    from jupyter_faas.dispatch.platform import MapResults, Platform

logger = logging.getLogger(__name__)

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
# None shows widgets only in a kernel; "widget" or "text" forces one, for a front end the detection gets wrong.
FRONT_END: str | None = None
# The updater's tick: no view refreshes more often than this, and only when its figures changed.
REFRESH_INTERVAL = 0.25
# The always-on cost grows with time alone, so an otherwise quiet dashboard still refreshes this often.
DASHBOARD_CLOCK_S = 10.0
# Bars of the latency histogram.
HISTOGRAM_BINS = 24
# The worker chart shows this many of the latest scale events as text.
TEXT_SCALE_EVENTS = 8

_RED = "#c62828"
_GREEN = "#2e7d32"
_BLUE = "#1565c0"
_MUTED = "#757575"
_SPARKS = "▁▂▃▄▅▆▇█"
_FONT = "font-size:12px;font-variant-numeric:tabular-nums;line-height:1.5"


# -- where we are ------------------------------------------------------------------------------------


def in_kernel() -> bool:
    """A widget front end exists only behind a kernel: an ipykernel shell, not terminal IPython or plain Python."""
    # Never import ipykernel here: if it is not loaded, this process is not a kernel.
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if zmqshell is None:
        return False
    from IPython import get_ipython

    return isinstance(get_ipython(), zmqshell.ZMQInteractiveShell)


def use_widgets() -> bool:
    """Widgets in a kernel, text elsewhere, unless FRONT_END says otherwise."""
    return in_kernel() if FRONT_END is None else FRONT_END == "widget"


# -- formatting ----------------------------------------------------------------------------------------


def _fixed(value: float, figures: int = 3) -> str:
    """About `figures` significant digits without an exponent: costs are often millionths of a dollar."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (figures - 1):
        return f"{value:,.0f}"
    digits = figures - 1 - math.floor(math.log10(abs(value)))
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{_fixed(value)} ms" if value < 1000 else f"{_fixed(value / 1000)} s"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${_fixed(value)}"


def _peak(value: int | None) -> str:
    # Measured peaks, unlike limits, are rarely round: 15.75 MiB reads better than 16128KiB.
    return "-" if value is None else format_bytes(int(value))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _clock(unix_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def _memory(summary: dict[str, Any]) -> str:
    if summary["peak_memory_max"] is None:
        return "-"
    return f"{_peak(summary['peak_memory_p50'])} p50, {_peak(summary['peak_memory_max'])} max"


def _last_error(summary: dict[str, Any], limit: int = 200) -> str | None:
    error = summary["last_error"]
    if error is None:
        return None
    message = error["message"] or ""
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{error['type']}: {message}" if message else str(error["type"])


def _e(value: Any) -> str:
    return html.escape(str(value))


# -- figures -------------------------------------------------------------------------------------------


def latency_histogram(latencies: Sequence[float], bins: int = HISTOGRAM_BINS) -> tuple[list[int], float, float]:
    """Counts in `bins` equal steps of log(latency) from the least to the most; latencies span orders of magnitude."""
    if not latencies:
        return [], 0.0, 0.0
    # Sorting and bisecting at the edges keeps the per-value work in C: 100,000 records take a few milliseconds.
    ordered = sorted(latencies)
    low, high = ordered[0], ordered[-1]
    log_low = math.log10(max(low, 1e-3))
    span = math.log10(max(high, 1e-3)) - log_low
    if span <= 0:
        return [len(ordered)] + [0] * (bins - 1), low, high
    below = [0, *(bisect.bisect_left(ordered, 10 ** (log_low + span * i / bins)) for i in range(1, bins)), len(ordered)]
    return [below[i + 1] - below[i] for i in range(bins)], low, high


def _sparkline(counts: list[int]) -> str:
    top = max(counts, default=0) or 1
    return "".join(" " if c == 0 else _SPARKS[min(len(_SPARKS) - 1, c * len(_SPARKS) // (top + 1))] for c in counts)


class _Reading:
    """The platform as one tick sees it: each function's figures are read once, however many views show them."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._stats: dict[str, dict[str, Any]] = {}
        self._latencies: dict[str, list[float]] = {}

    def stats(self, name: str) -> dict[str, Any]:
        if name not in self._stats:
            self._stats[name] = self.platform.stats(name)
        return self._stats[name]

    def latencies(self, name: str) -> list[float]:
        if name not in self._latencies:
            self._latencies[name] = self.platform.latencies(name)
        return self._latencies[name]


class CardSubject(Protocol):
    """What a function card shows of a function: its header facts, read once; the rest comes from the platform."""

    def card_header(self) -> dict[str, str]:
        """ "name", "version", "signature" and "limits", as text."""
        ...


def _header(fn: CardSubject) -> dict[str, str]:
    return fn.card_header()


def _function_summary(header: dict[str, str], reading: _Reading) -> dict[str, Any]:
    name = header["name"]
    counts, low, high = latency_histogram(reading.latencies(name))
    triggers = _deploy.function_triggers(name)
    return {
        **header,
        **reading.stats(name),
        "histogram": counts,
        "latency_range": (low, high),
        "triggers": triggers,
        "last_output": _last_output(reading.platform.recent(name, 1)),
    }


# Lines of the newest invocation's output that the card shows.
_OUTPUT_LINES = 8


def _last_output(newest: list[Any]) -> dict[str, Any] | None:
    """The tail of the newest invocation's output, if it wrote any."""
    if not newest or not newest[-1].output:
        return None
    lines = newest[-1].output.splitlines()
    return {"id": newest[-1].id, "lines": lines[-_OUTPUT_LINES:], "hidden": max(0, len(lines) - _OUTPUT_LINES)}


def function_summary(fn: CardSubject) -> dict[str, Any]:
    """A function's card figures as plain Python: its header, `stats()`, and the latency histogram."""
    return _function_summary(_header(fn), _Reading(_platform.current(start=False)))


def function_text(fn: CardSubject) -> str:
    """The card as text, for a terminal."""
    return _card_text(function_summary(fn))


def _card_text(s: dict[str, Any]) -> str:
    latency = f"  latency p50 {_ms(s['p50_ms'])} · p95 {_ms(s['p95_ms'])} · p99 {_ms(s['p99_ms'])}"
    if s["histogram"]:
        low, high = s["latency_range"]
        latency += f"   {_ms(low)} |{_sparkline(s['histogram'])}| {_ms(high)}"
    error = _last_error(s)
    return "\n".join(
        [
            f"{s['signature']} · version {s['version']} · {s['limits']}",
            f"  invocations {s['invocations']:,} · errors {s['errors']:,} · cold starts {s['cold_starts']:,}",
            latency,
            f"  GB-seconds {_fixed(s['gb_seconds'])} · cost {_usd(s['cost_usd'])} · peak memory {_memory(s)}",
            f"  last error {error}" if error else "  no errors",
            *([f"  runs {' · '.join(s['triggers'])}"] if s.get("triggers") else []),
            *_output_text(s.get("last_output")),
        ]
    )


def _output_text(last: dict[str, Any] | None) -> list[str]:
    if last is None:
        return []
    above = f", {last['hidden']:,} lines above" if last["hidden"] else ""
    return [f"  last output ({last['id']}{above}):", *(f"    {line}" for line in last["lines"])]


def _output_html(s: dict[str, Any]) -> str:
    last = s.get("last_output")
    if last is None:
        return ""
    above = f" · {last['hidden']:,} lines above: {s['name']}.logs()" if last["hidden"] else ""
    text = _e("\n".join(last["lines"]))
    return (
        f'<div style="{_FONT};color:{_MUTED}">last output · {_e(last["id"])}{_e(above)}</div>'
        f'<pre style="margin:2px 0;max-height:10em;overflow:auto;font-size:12px">{text}</pre>'
    )


def _figure_cells(pairs: list[tuple[str, str, str]]) -> str:
    return "".join(f"<th>{_e(label)}</th><td{style}>{_e(value)}</td>" for label, value, style in pairs)


def _card_figures_html(s: dict[str, Any]) -> str:
    red = f' style="color:{_RED}"' if s["errors"] else ""
    rows = [
        [
            ("invocations", f"{s['invocations']:,}", ""),
            ("errors", f"{s['errors']:,}", red),
            ("cold starts", f"{s['cold_starts']:,}", ""),
        ],
        [("p50", _ms(s["p50_ms"]), ""), ("p95", _ms(s["p95_ms"]), ""), ("p99", _ms(s["p99_ms"]), "")],
        [
            ("GB-seconds", _fixed(s["gb_seconds"]), ""),
            ("cost", _usd(s["cost_usd"]), ""),
            ("peak memory", _memory(s), ""),
        ],
    ]
    body = "".join(f"<tr>{_figure_cells(row)}</tr>" for row in rows)
    return (
        f'<table style="{_FONT};border-collapse:collapse;text-align:left" cellpadding="2">{body}</table>'
        "<style>.faas-view th{font-weight:normal;color:#757575;padding-right:4px}"
        ".faas-view td{padding-right:14px}</style>"
    )


def _histogram_svg(s: dict[str, Any]) -> str:
    counts = s["histogram"]
    if not counts:
        return f'<div style="{_FONT};color:{_MUTED}">latency histogram: no invocations yet</div>'
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
            f'fill="{_BLUE}"><title>{count:,} between {_e(_ms(edges[i]))} and {_e(_ms(edges[i + 1]))}</title></rect>'
        )
    for label in ("p50", "p95", "p99"):
        value = s[f"{label}_ms"]
        if value is None:
            continue
        x = 0.0 if span <= 0 else (math.log10(max(value, 1e-3)) - log_low) / span * width
        x = min(max(x, 0.5), width - 0.5)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="{_RED}" stroke-dasharray="2,2">'
            f"<title>{label} {_e(_ms(value))}</title></line>"
        )
    parts.append(
        f'<text x="0" y="{height + bottom - 2}" font-size="10" fill="{_MUTED}">{_e(_ms(low))}</text>'
        f'<text x="{width / 2:.0f}" y="{height + bottom - 2}" font-size="10" fill="{_MUTED}" text-anchor="middle">'
        f"latency, log scale; dashed: p50 p95 p99</text>"
        f'<text x="{width}" y="{height + bottom - 2}" font-size="10" fill="{_MUTED}" text-anchor="end">'
        f"{_e(_ms(high))}</text></svg>"
    )
    return "".join(parts)


def _error_html(s: dict[str, Any]) -> str:
    error = _last_error(s)
    if error is None:
        return f'<div style="{_FONT};color:{_MUTED}">no errors</div>'
    ident = s["last_error"]["id"]
    return f'<div style="{_FONT};color:{_RED}" title="invocation {_e(ident)}"><b>last error</b> {_e(error)}</div>'


# -- live views ----------------------------------------------------------------------------------------


class _LiveView(ipywidgets.VBox):
    """A widget the updater keeps current; `summary` holds its figures as plain Python, `text()` as text."""

    def __init__(self, children: list[ipywidgets.Widget]) -> None:
        super().__init__(children=children)
        self.add_class("faas-view")
        self.summary: dict[str, Any] = {}
        self._last_key: Hashable = None
        self._refresh_lock = threading.Lock()
        self.refresh()
        _updater.watch(self)

    def _key(self, reading: _Reading) -> Hashable:
        """What changes whenever the figures do; the updater refreshes only when it differs."""
        raise NotImplementedError

    def _read(self, reading: _Reading) -> dict[str, Any]:
        raise NotImplementedError

    def _render(self, summary: dict[str, Any]) -> list[tuple[ipywidgets.HTML, str]]:
        raise NotImplementedError

    def _text(self, summary: dict[str, Any]) -> str:
        raise NotImplementedError

    def refresh(self, reading: _Reading | None = None) -> None:
        """Read the figures now and send what changed to the front end."""
        reading = reading or _Reading(_platform.current(start=False))
        with self._refresh_lock:
            key = self._key(reading)
            summary = self._read(reading)
            self.summary = summary
            for widget, value in self._render(summary):
                if widget.value != value:
                    with widget.hold_sync():
                        widget.value = value
            # Only once it is all sent: a refresh that failed half-way is tried again on the next tick.
            self._last_key = key

    def _refresh_if_changed(self, reading: _Reading) -> bool:
        if self._key(reading) == self._last_key:
            return False
        self.refresh(reading)
        return True

    def text(self) -> str:
        """The same figures as text, read now."""
        self.refresh()
        return self._text(self.summary)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # text/plain carries the figures, for front ends without widgets and for a terminal.
        bundle = {"text/plain": self.text()}
        if use_widgets():
            view = super()._repr_mimebundle_(**kwargs) or {}
            bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle


class FunctionCard(_LiveView):
    """One function at a glance: its definition, counts, latency, cost, peak memory and last error; kept current."""

    def __init__(self, fn: CardSubject) -> None:
        # The card keeps the function's description, not the function, so it never keeps an old definition alive.
        self._header_facts = _header(fn)
        self.header = ipywidgets.HTML()
        self.figures = ipywidgets.HTML()
        self.histogram = ipywidgets.HTML()
        self.error = ipywidgets.HTML()
        self.output = ipywidgets.HTML()
        super().__init__([self.header, self.figures, self.histogram, self.error, self.output])
        self.layout = ipywidgets.Layout(border="1px solid #e0e0e0", padding="4px 10px", width="fit-content")

    @property
    def name(self) -> str:
        return self._header_facts["name"]

    def _key(self, reading: _Reading) -> Hashable:
        return (reading.platform, reading.platform.revision(self.name), _deploy.triggers_stamp())

    def _read(self, reading: _Reading) -> dict[str, Any]:
        return _function_summary(self._header_facts, reading)

    def _render(self, summary: dict[str, Any]) -> list[tuple[ipywidgets.HTML, str]]:
        s = summary
        runs = " · ".join(s.get("triggers", []))
        header = (
            f'<div style="{_FONT}"><b style="font-size:14px">{_e(s["signature"])}</b> '
            f'<span style="color:{_MUTED}">version {_e(s["version"])} · {_e(s["limits"])}</span>'
            + (f'<br><span style="color:{_MUTED}">runs {_e(runs)}</span>' if runs else "")
            + "</div>"
        )
        return [
            (self.header, header),
            (self.figures, _card_figures_html(s)),
            (self.histogram, _histogram_svg(s)),
            (self.error, _error_html(s)),
            (self.output, _output_html(s)),
        ]

    def _text(self, summary: dict[str, Any]) -> str:
        return _card_text(summary)


_made_lock = threading.Lock()


def function_mimebundle(fn: CardSubject, card: Callable[[], FunctionCard]) -> dict[str, Any]:
    """The card in a kernel (`card` makes or returns it); the card as text elsewhere, without making a widget."""
    if use_widgets():
        return card()._repr_mimebundle_()
    return {"text/plain": function_text(fn)}


_COLUMNS = ("function", "invocations", "errors", "cold starts", "p50", "p95", "p99", "GB-seconds", "cost",
            "peak memory", "last error")  # fmt: skip


def _function_row(f: dict[str, Any]) -> list[str]:
    return [
        f["name"], f"{f['invocations']:,}", f"{f['errors']:,}", f"{f['cold_starts']:,}", _ms(f["p50_ms"]),
        _ms(f["p95_ms"]), _ms(f["p99_ms"]), _fixed(f["gb_seconds"]), _usd(f["cost_usd"]), _memory(f),
        "" if f["last_error"] is None else str(f["last_error"]["type"]),
    ]  # fmt: skip


def _platform_summary(reading: _Reading) -> dict[str, Any]:
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


def _scale_to_zero(s: dict[str, Any]) -> str:
    if not s["started"]:
        return "not started"
    if s["workers"] == 0:
        return "at zero workers"
    if s["scale_to_zero_in"] is not None:
        return f"scales to zero in {math.ceil(s['scale_to_zero_in'])} s"
    if s["mode"] != "embedded":
        return "the cluster scales itself"
    return "busy: the countdown starts when the work ends"


def _cost_line(c: dict[str, Any]) -> str:
    even = c["break_even_per_hour"]
    even_text = "no invocations yet" if even is None else f"{_fixed(even)} invocations/hour"
    return (
        f"pay-per-use {_usd(c['serverless_usd'])} vs always-on {_usd(c['always_on_usd'])} over "
        f"{_duration(c['period_s'])} · idle {c['idle_fraction']:.1%} · break-even at {even_text}"
    )


def _platform_text(s: dict[str, Any]) -> str:
    lines = [
        s["platform"],
        f"  workers {s['workers']} / {s['maximum']} · idle-timeout {_duration(s['idle_timeout'])} · "
        f"{_scale_to_zero(s)}" + (f" · Dask dashboard {s['dashboard_link']}" if s["dashboard_link"] else ""),
    ]
    events = s["scale_events"]
    if events:
        shown = " → ".join(f"{_clock(t)} {n}" for t, n in events[-TEXT_SCALE_EVENTS:])
        more = f"({len(events) - TEXT_SCALE_EVENTS} earlier) " if len(events) > TEXT_SCALE_EVENTS else ""
        lines.append(f"  worker count: {more}{shown}")
    lines.append(f"  cost: {_cost_line(s['cost'])}")
    if not s["functions"]:
        lines.append("  no functions yet")
        return "\n".join(lines)
    rows = [list(_COLUMNS), *(_function_row(f) for f in s["functions"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = [cell.ljust(width) if i in (0, len(row) - 1) else cell.rjust(width) for i, (cell, width) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _workers_svg(s: dict[str, Any]) -> str:
    events = s["scale_events"]
    if not events:
        return f'<div style="{_FONT};color:{_MUTED}">worker count: not started</div>'
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
        tip = f"<title>{_clock(t)}: {n} worker{'s' if n != 1 else ''}</title>"
        if n > previous:
            marks.append(f'<path d="M{x(t):.1f},{y(n) - 6:.1f}l4,7h-8z" fill="{_GREEN}">{tip}</path>')
        elif n == 0:
            marks.append(f'<circle cx="{x(t):.1f}" cy="{y(0):.1f}" r="3.5" fill="{_RED}">{tip}</circle>')
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
            f'<text x="{left - 4}" y="{y(0) + 4:.1f}" font-size="10" fill="{_MUTED}" text-anchor="end">0</text>',
            f'<text x="{left - 4}" y="{y(highest) + 4:.1f}" font-size="10" fill="{_MUTED}" text-anchor="end">'
            f"{highest}</text>",
            f'<path d="{"".join(path)}" fill="none" stroke="{_BLUE}" stroke-width="2"/>',
            *marks,
            f'<text x="{left}" y="{label_y}" font-size="10" fill="{_MUTED}">{_clock(start)}</text>',
            f'<text x="{width - 4}" y="{label_y}" font-size="10" fill="{_MUTED}" text-anchor="end">now</text>',
            f'<text x="{left}" y="{label_y + 13}" font-size="10" fill="{_MUTED}">workers over time · '
            f'<tspan fill="{_GREEN}">▲</tspan> scale up · <tspan fill="{_RED}">●</tspan> scale to zero</text>',
            "</svg>",
        ]
    )


def _table_html(s: dict[str, Any]) -> str:
    if not s["functions"]:
        return f'<div style="{_FONT};color:{_MUTED}">no functions yet</div>'
    head = "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS)
    rows = []
    for f in s["functions"]:
        cells = _function_row(f)
        error = _last_error(f)
        cells_html = [f"<td><b>{_e(cells[0])}</b></td>"]
        cells_html += [f'<td style="text-align:right">{_e(c)}</td>' for c in cells[1:-1]]
        tip = f' title="{_e(error)}"' if error else ""
        cells_html.append(f'<td style="color:{_RED}"{tip}>{_e(cells[-1])}</td>')
        rows.append(f"<tr>{''.join(cells_html)}</tr>")
    return (
        f'<table style="{_FONT};border-collapse:collapse" cellpadding="3"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


class Dashboard(_LiveView):
    """The platform at a glance: workers and scale to zero, worker count over time, every function, and cost."""

    def __init__(self) -> None:
        self.header = ipywidgets.HTML()
        self.chart = ipywidgets.HTML()
        self.table = ipywidgets.HTML()
        self.cost = ipywidgets.HTML()
        super().__init__([self.header, self.chart, self.table, self.cost])

    def _key(self, reading: _Reading) -> Hashable:
        p = reading.platform
        countdown = p.seconds_to_scale_to_zero()
        return (
            p, p.started, p.workers, len(p.scale_events), p.revision(), len(p.function_names()),
            None if countdown is None else math.ceil(countdown), int(time.monotonic() // DASHBOARD_CLOCK_S),
        )  # fmt: skip

    def _read(self, reading: _Reading) -> dict[str, Any]:
        return _platform_summary(reading)

    def _render(self, summary: dict[str, Any]) -> list[tuple[ipywidgets.HTML, str]]:
        s = summary
        link = s["dashboard_link"]
        link_html = f' · <a href="{_e(link)}" target="_blank">Dask dashboard</a>' if link else ""
        header = (
            f'<div style="{_FONT}"><b style="font-size:14px">jupyter-faas platform</b> '
            f'<span style="color:{_MUTED}">{_e(s["mode"] or "not started")}</span><br>'
            f"workers <b>{s['workers']} / {s['maximum']}</b> · idle-timeout {_e(_duration(s['idle_timeout']))} · "
            f"{_e(_scale_to_zero(s))}{link_html}</div>"
        )
        cost = f'<div style="{_FONT}"><b>cost</b> {_e(_cost_line(s["cost"]))}</div>'
        return [(self.header, header), (self.chart, _workers_svg(s)), (self.table, _table_html(s)), (self.cost, cost)]

    def _text(self, summary: dict[str, Any]) -> str:
        return _platform_text(summary)


_dashboard: Dashboard | None = None


def dashboard() -> Dashboard:
    """The platform's live dashboard (an ipywidgets widget; text where there is no widget front end).

    One per process: each call returns it, refreshed; as a cell's last expression it displays.
    """
    global _dashboard
    with _made_lock:
        if _dashboard is None or _dashboard.comm is None:
            _dashboard = Dashboard()
        board = _dashboard
    board.refresh()
    return board


def dashboard_text() -> str:
    """The dashboard as text, without making a widget."""
    return _platform_text(_platform_summary(_Reading(_platform.current(start=False))))


def show_dashboard() -> None:
    """`%faas`: the dashboard widget in a kernel, its text elsewhere."""
    if use_widgets():
        display(dashboard())
    else:
        print(dashboard_text())


# -- the updater ---------------------------------------------------------------------------------------


class _Updater:
    """The one thread that keeps every live view current; it holds them weakly and never displays anything."""

    def __init__(self) -> None:
        self._views: weakref.WeakSet[_LiveView] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Ticks that refreshed at least one view, for measuring how the updater batches.
        self.refreshing_ticks = 0

    def watch(self, view: _LiveView) -> None:
        with self._lock:
            self._views.add(view)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="faas-widgets", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                time.sleep(REFRESH_INTERVAL)
                self.tick()
        except BaseException:  # the interpreter is tearing down under a daemon thread
            return

    def tick(self) -> None:
        """Refresh every live view whose figures changed since its last refresh."""
        with self._lock:
            views = list(self._views)
        if not views:
            return
        try:
            reading = _Reading(_platform.current(start=False))
        except Exception:
            logger.debug("faas widgets: cannot read the platform", exc_info=True)
            return
        refreshed = False
        for view in views:
            if view.comm is None:  # closed: its views are gone from the front end
                with self._lock:
                    self._views.discard(view)
                continue
            try:
                refreshed = view._refresh_if_changed(reading) or refreshed
            except Exception:  # a platform shutting down, or a bad config value: the next tick tries again
                logger.debug("faas widgets: refresh failed", exc_info=True)
        self.refreshing_ticks += refreshed


_updater = _Updater()


# -- map progress --------------------------------------------------------------------------------------


class MapProgress:
    """How far a long map has got: a bar and a label in a kernel, one updating line on stderr elsewhere."""

    def __init__(self, name: str, results: MapResults, began: float) -> None:
        self.name = name
        self.results = results
        self.began = began
        self.state = "running"
        self.summary: dict[str, Any] = {}
        self.bar: ipywidgets.IntProgress | None = None
        self.label: ipywidgets.Label | None = None
        self.widget: ipywidgets.HBox | None = None
        self._line = ""
        if use_widgets():
            self.bar = ipywidgets.IntProgress(
                value=0, min=0, max=results.total, description=name, style={"description_width": "initial"}
            )
            self.label = ipywidgets.Label()
            self.widget = ipywidgets.HBox([self.bar, self.label])
            self.update()
            display(self.widget)
        else:
            self.update()

    def update(self) -> None:
        results = self.results
        done, failed, total = results.done, results.failed, results.total
        elapsed = max(time.monotonic() - self.began, 1e-6)
        rate = done / elapsed
        errors = f"{failed:,} error{'' if failed == 1 else 's'}"
        if self.state == "running":
            text = f"{done:,}/{total:,} · {errors} · {rate:,.1f}/s"
            style = "danger" if failed else ""
        else:
            took = f"{rate:,.1f}/s in {_duration(elapsed) if elapsed >= 120 else f'{elapsed:.1f} s'}"
            head = f"interrupted at {done:,}/{total:,}" if self.state == "interrupted" else f"{done:,}/{total:,} done"
            text = f"{head} · {errors} · {took}"
            style = {"interrupted": "warning", "failed": "danger"}.get(self.state, "success")
        self.summary = {
            "state": self.state, "done": done, "total": total, "failed": failed, "rate": rate,
            "elapsed_s": elapsed, "text": text, "bar_style": style,
        }  # fmt: skip
        if self.bar is not None and self.label is not None:
            with self.bar.hold_sync():
                self.bar.value = done
                self.bar.bar_style = style
            with self.label.hold_sync():
                self.label.value = text
            return
        line = f"{self.name}: {text}"
        if line != self._line:
            # Pad over the previous line, which may have been longer.
            sys.stderr.write("\r" + line.ljust(len(self._line)))
            sys.stderr.flush()
            self._line = line

    def finish(self, interrupted: bool) -> None:
        """The final state: done (success), with errors (danger), or interrupted (warning)."""
        self.state = "interrupted" if interrupted else "failed" if self.results.failed else "done"
        self.update()
        if self.widget is None:
            sys.stderr.write("\n")
            sys.stderr.flush()


# The progress of the latest map that showed one, to look at after the fact.
last_progress: MapProgress | None = None


def wait_with_progress(name: str, results: MapResults, began: float) -> None:
    """Wait for a map's results while showing its progress; it ends in a final state whatever happens."""
    global last_progress
    progress = last_progress = MapProgress(name, results, began)
    finished = False
    try:
        while not results.wait(REFRESH_INTERVAL):
            progress.update()
        finished = True
    finally:
        progress.finish(interrupted=not finished)
