"""The UI's names for the rest of the package: live views, their text and map progress, from the modules beside it."""

from __future__ import annotations

from jupyter_faas.ui.figures import HISTOGRAM_BINS, latency_histogram
from jupyter_faas.ui.frontend import WIDGET_VIEW_MIME, in_kernel, use_widgets
from jupyter_faas.ui.progress import MapProgress, TextProgress, WidgetProgress, wait_with_progress
from jupyter_faas.ui.summary import CardSubject, function_summary
from jupyter_faas.ui.text import TEXT_SCALE_EVENTS, dashboard_text, function_text
from jupyter_faas.ui.views import (
    DASHBOARD_CLOCK_S,
    REFRESH_INTERVAL,
    Dashboard,
    FunctionCard,
    dashboard,
    function_mimebundle,
    show_dashboard,
)

__all__ = [
    "DASHBOARD_CLOCK_S",
    "HISTOGRAM_BINS",
    "REFRESH_INTERVAL",
    "TEXT_SCALE_EVENTS",
    "WIDGET_VIEW_MIME",
    "CardSubject",
    "Dashboard",
    "FunctionCard",
    "MapProgress",
    "TextProgress",
    "WidgetProgress",
    "dashboard",
    "dashboard_text",
    "function_mimebundle",
    "function_summary",
    "function_text",
    "in_kernel",
    "latency_histogram",
    "show_dashboard",
    "use_widgets",
    "wait_with_progress",
]
