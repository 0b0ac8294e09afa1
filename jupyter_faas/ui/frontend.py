"""Where we are: a kernel with a widget front end, or a terminal that gets text."""

from __future__ import annotations

import sys

from IPython import get_ipython

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
# None shows widgets only in a kernel; "widget" or "text" forces one, for a front end the detection gets wrong.
FRONT_END: str | None = None


def in_kernel() -> bool:
    """A widget front end exists only behind a kernel: an ipykernel shell, not terminal IPython or plain Python."""
    # Never import ipykernel here: if it is not loaded, this process is not a kernel.
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if zmqshell is None:
        return False
    return isinstance(get_ipython(), zmqshell.ZMQInteractiveShell)


def use_widgets() -> bool:
    """Widgets in a kernel, text elsewhere, unless FRONT_END says otherwise."""
    return in_kernel() if FRONT_END is None else FRONT_END == "widget"
