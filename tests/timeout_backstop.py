"""A backstop for pytest-timeout: a test still running well past its timeout ends the run instead of hanging it."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from typing import Any

import pytest

# pytest-timeout's signal method raises its failure in the main thread wherever it happens to be. Inside an asyncio
# event loop (pytest-jupyter's async tests) that is often a callback, and asyncio logs and swallows the exception
# there: the timer is one-shot, so the test then hangs forever and CI with it. This thread does not depend on the
# main thread: GRACE seconds after the timeout it prints the test's id and every thread's stack, and exits.
GRACE = float(os.environ.get("FAAS_TEST_TIMEOUT_GRACE", "30"))
_BACKSTOP = pytest.StashKey[threading.Timer]()


def _end_the_run(item: pytest.Item, timeout: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    terminal = item.config.get_terminal_writer()
    terminal.sep("+", title="Timeout backstop")
    terminal.line(f"{item.nodeid} still runs {GRACE:g} s after its {timeout:g} s timeout failed to stop it: exiting")
    terminal.flush()
    sys.stdout.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Arm the backstop next to pytest-timeout's own timer (this hook returns None, so pytest-timeout's still runs)."""
    backstop = threading.Timer(settings.timeout + GRACE, _end_the_run, (item, settings.timeout))
    backstop.name = f"timeout backstop {item.nodeid}"
    backstop.daemon = True
    item.stash[_BACKSTOP] = backstop
    backstop.start()


def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    backstop = item.stash.get(_BACKSTOP, None)
    if backstop is not None:
        backstop.cancel()
