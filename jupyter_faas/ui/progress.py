"""How far a long map has got: one base class, a text line on stderr and a widget bar, as in Dask's progress bars."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Literal, TypedDict

import ipywidgets
from IPython.display import display

from jupyter_faas.ui.format import duration
from jupyter_faas.ui.frontend import use_widgets
from jupyter_faas.ui.views import REFRESH_INTERVAL

if TYPE_CHECKING:
    from jupyter_faas.dispatch.platform import MapResults

State = Literal["running", "done", "failed", "interrupted"]


class ProgressSummary(TypedDict):
    state: State
    done: int
    total: int
    failed: int
    rate: float
    elapsed_s: float
    text: str
    bar_style: str


class MapProgress:
    """A map's progress as figures and one line of text; the subclasses show it."""

    # Only the widget shows these; None in text.
    bar: ipywidgets.IntProgress | None = None
    label: ipywidgets.Label | None = None
    widget: ipywidgets.HBox | None = None

    def __init__(self, name: str, results: MapResults, began: float) -> None:
        self.name = name
        self.results = results
        self.began = began
        self.state: State = "running"
        self.summary: ProgressSummary = self._summarize()

    def _summarize(self) -> ProgressSummary:
        results = self.results
        done, failed, total = results.done, results.failed, results.total
        elapsed = max(time.monotonic() - self.began, 1e-6)
        rate = done / elapsed
        errors = f"{failed:,} error{'' if failed == 1 else 's'}"
        if self.state == "running":
            text = f"{done:,}/{total:,} · {errors} · {rate:,.1f}/s"
            style = "danger" if failed else ""
        else:
            took = f"{rate:,.1f}/s in {duration(elapsed) if elapsed >= 120 else f'{elapsed:.1f} s'}"
            head = f"interrupted at {done:,}/{total:,}" if self.state == "interrupted" else f"{done:,}/{total:,} done"
            text = f"{head} · {errors} · {took}"
            style = {"interrupted": "warning", "failed": "danger"}.get(self.state, "success")
        return {
            "state": self.state, "done": done, "total": total, "failed": failed, "rate": rate,
            "elapsed_s": elapsed, "text": text, "bar_style": style,
        }  # fmt: skip

    def update(self) -> None:
        """Read the figures now and show them."""
        self.summary = self._summarize()
        self._show(self.summary)

    def _show(self, summary: ProgressSummary) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """After the final state is shown."""

    def finish(self, interrupted: bool) -> None:
        """The final state: done (success), with errors (danger), or interrupted (warning)."""
        self.state = "interrupted" if interrupted else "failed" if self.results.failed else "done"
        self.update()
        self._close()


class TextProgress(MapProgress):
    """One updating line on stderr, where there is no widget front end."""

    def __init__(self, name: str, results: MapResults, began: float) -> None:
        self._line = ""
        super().__init__(name, results, began)
        self.update()

    def _show(self, summary: ProgressSummary) -> None:
        line = f"{self.name}: {summary['text']}"
        if line != self._line:
            # Pad over the previous line, which may have been longer.
            sys.stderr.write("\r" + line.ljust(len(self._line)))
            sys.stderr.flush()
            self._line = line

    def _close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class WidgetProgress(MapProgress):
    """A bar and a label, in a kernel."""

    bar: ipywidgets.IntProgress
    label: ipywidgets.Label
    widget: ipywidgets.HBox

    def __init__(self, name: str, results: MapResults, began: float) -> None:
        super().__init__(name, results, began)
        self.bar = ipywidgets.IntProgress(
            value=0, min=0, max=results.total, description=name, style={"description_width": "initial"}
        )
        self.label = ipywidgets.Label()
        self.widget = ipywidgets.HBox([self.bar, self.label])
        self.update()
        display(self.widget)  # type: ignore[no-untyped-call]  # IPython.display is untyped

    def _show(self, summary: ProgressSummary) -> None:
        with self.bar.hold_sync():
            self.bar.value = summary["done"]
            self.bar.bar_style = summary["bar_style"]
        with self.label.hold_sync():
            self.label.value = summary["text"]


def map_progress(name: str, results: MapResults, began: float) -> MapProgress:
    """The widget in a kernel, the line on stderr elsewhere."""
    kind = WidgetProgress if use_widgets() else TextProgress
    return kind(name, results, began)


# The progress of the latest map that showed one, to look at after the fact.
last_progress: MapProgress | None = None


def wait_with_progress(name: str, results: MapResults, began: float) -> None:
    """Wait for a map's results while showing its progress; it ends in a final state whatever happens."""
    global last_progress
    progress = last_progress = map_progress(name, results, began)
    finished = False
    try:
        while not results.wait(REFRESH_INTERVAL):
            progress.update()
        finished = True
    finally:
        progress.finish(interrupted=not finished)
