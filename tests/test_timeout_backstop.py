"""The suite's timeout backstop ends a run whose test hangs where pytest-timeout's own exception gets swallowed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# An async test run by pytest-jupyter whose event loop stays busy in callbacks: pytest-timeout's SIGALRM lands in a
# callback, asyncio logs and swallows the failure, and without the backstop this run never ends.
HANGING_TEST = """
import asyncio
import time


async def test_hangs_in_a_busy_event_loop():
    loop = asyncio.get_running_loop()

    def spin():
        time.sleep(0.01)
        loop.call_soon(spin)

    loop.call_soon(spin)
    await asyncio.Event().wait()
"""


def test_a_hang_that_swallows_the_timeout_ends_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING_TEST)
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), "FAAS_TEST_TIMEOUT_GRACE": "2"}
    started = time.monotonic()
    plugins = ["-p", "no:cacheprovider", "-p", "pytest_jupyter.jupyter_core", "-p", "tests.timeout_backstop"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-o", "timeout=1", "-o", "timeout_method=signal", "test_hang.py"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "test_hang.py::test_hangs_in_a_busy_event_loop still runs 2 s after its 1 s timeout" in output, output
    assert "in run_until_complete" in output, output  # every thread's stack is shown
    assert time.monotonic() - started < 60
