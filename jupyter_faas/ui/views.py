"""The live ipywidget views, the function card and the dashboard, and the one updater thread that keeps them current."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import ipywidgets
from IPython.display import display

from jupyter_faas.ui.frontend import use_widgets
from jupyter_faas.ui.html import (
    call_tree_html,
    card_figures_html,
    card_header_html,
    cost_html,
    dashboard_header_html,
    error_html,
    histogram_svg,
    output_html,
    table_html,
    workers_svg,
)
from jupyter_faas.ui.summary import (
    CardSubject,
    FunctionSummary,
    PlatformSummary,
    Reading,
    card_header,
    current_reading,
    platform_summary,
    read_function,
)
from jupyter_faas.ui.text import card_text, dashboard_text, function_text, platform_text

logger = logging.getLogger(__name__)

# The updater's tick: no view refreshes more often than this, and only when its figures changed.
REFRESH_INTERVAL = 0.25
# The always-on cost grows with time alone, so an otherwise quiet dashboard still refreshes this often.
DASHBOARD_CLOCK_S = 10.0

S = TypeVar("S", FunctionSummary, PlatformSummary)


class _LiveView(ipywidgets.VBox, Generic[S]):  # type: ignore[misc]  # ipywidgets is untyped
    """A widget the updater keeps current; `summary` holds its figures as plain Python, `text()` as text."""

    summary: S

    def __init__(self, children: list[ipywidgets.Widget]) -> None:
        super().__init__(children=children)
        self.add_class("faas-view")
        self._last_key: Hashable = None
        self._refresh_lock: threading.Lock = threading.Lock()
        self.refresh()
        _updater.watch(self)

    def _key(self, reading: Reading) -> Hashable:
        """What changes whenever the figures do; the updater refreshes only when it differs."""
        raise NotImplementedError

    def _read(self, reading: Reading) -> S:
        raise NotImplementedError

    def _render(self, summary: S) -> list[tuple[ipywidgets.HTML, str]]:
        raise NotImplementedError

    def _text(self, summary: S) -> str:
        raise NotImplementedError

    def refresh(self, reading: Reading | None = None) -> None:
        """Read the figures now and send what changed to the front end."""
        reading = reading or current_reading()
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

    def _refresh_if_changed(self, reading: Reading) -> bool:
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
        bundle: dict[str, Any] = {"text/plain": self.text()}
        if use_widgets():
            view = super()._repr_mimebundle_(**kwargs) or {}
            bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle


class FunctionCard(_LiveView[FunctionSummary]):
    """One function at a glance: its definition, counts, latency, cost, peak memory and last error; kept current."""

    def __init__(
        self,
        fn: CardSubject,
        triggers_of: Callable[[str], list[str]] = lambda name: [],
        triggers_stamp: Callable[[], int | None] = lambda: None,
    ) -> None:
        # The card keeps the function's description, not the function, so it never keeps an old definition alive;
        # what fires a function it asks of `triggers_of`, and re-reads when `triggers_stamp` changes.
        self._header_facts = card_header(fn)
        self._triggers_of = triggers_of
        self._triggers_stamp = triggers_stamp
        self.header = ipywidgets.HTML()
        self.figures = ipywidgets.HTML()
        self.histogram = ipywidgets.HTML()
        self.error = ipywidgets.HTML()
        self.output = ipywidgets.HTML()
        self.calls = ipywidgets.HTML()
        super().__init__([self.header, self.figures, self.histogram, self.error, self.output, self.calls])
        self.layout = ipywidgets.Layout(border="1px solid #e0e0e0", padding="4px 10px", width="fit-content")

    @property
    def name(self) -> str:
        return self._header_facts["name"]

    def _key(self, reading: Reading) -> Hashable:
        return (reading.platform, reading.platform.revision(self.name), self._triggers_stamp())

    def _read(self, reading: Reading) -> FunctionSummary:
        return read_function(self._header_facts, reading, self._triggers_of(self.name))

    def _render(self, summary: FunctionSummary) -> list[tuple[ipywidgets.HTML, str]]:
        return [
            (self.header, card_header_html(summary)),
            (self.figures, card_figures_html(summary)),
            (self.histogram, histogram_svg(summary)),
            (self.error, error_html(summary)),
            (self.output, output_html(summary)),
            (self.calls, call_tree_html(summary)),
        ]

    def _text(self, summary: FunctionSummary) -> str:
        return card_text(summary)


_made_lock = threading.Lock()


def function_mimebundle(fn: CardSubject, card: Callable[[], FunctionCard]) -> dict[str, Any]:
    """The card in a kernel (`card` makes or returns it); the card as text elsewhere, without making a widget."""
    if use_widgets():
        return card()._repr_mimebundle_()
    return {"text/plain": function_text(fn)}


class Dashboard(_LiveView[PlatformSummary]):
    """The platform at a glance: workers and scale to zero, worker count over time, every function, and cost."""

    def __init__(self) -> None:
        self.header = ipywidgets.HTML()
        self.chart = ipywidgets.HTML()
        self.table = ipywidgets.HTML()
        self.cost = ipywidgets.HTML()
        super().__init__([self.header, self.chart, self.table, self.cost])

    def _key(self, reading: Reading) -> Hashable:
        p = reading.platform
        countdown = p.seconds_to_scale_to_zero()
        return (
            p, p.started, p.workers, len(p.scale_events), p.revision(), len(p.function_names()),
            None if countdown is None else math.ceil(countdown), int(time.monotonic() // DASHBOARD_CLOCK_S),
        )  # fmt: skip

    def _read(self, reading: Reading) -> PlatformSummary:
        return platform_summary(reading)

    def _render(self, summary: PlatformSummary) -> list[tuple[ipywidgets.HTML, str]]:
        return [
            (self.header, dashboard_header_html(summary)),
            (self.chart, workers_svg(summary)),
            (self.table, table_html(summary)),
            (self.cost, cost_html(summary)),
        ]

    def _text(self, summary: PlatformSummary) -> str:
        return platform_text(summary)


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


def show_dashboard() -> None:
    """`%faas`: the dashboard widget in a kernel, its text elsewhere."""
    if use_widgets():
        display(dashboard())  # type: ignore[no-untyped-call]  # IPython.display is untyped
    else:
        print(dashboard_text())


class _Updater:
    """The one thread that keeps every live view current; it holds them weakly and never displays anything."""

    def __init__(self) -> None:
        self._views: weakref.WeakSet[_LiveView[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Ticks that refreshed at least one view, for measuring how the updater batches.
        self.refreshing_ticks = 0

    def watch(self, view: _LiveView[Any]) -> None:
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
            reading = current_reading()
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
