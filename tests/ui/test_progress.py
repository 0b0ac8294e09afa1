"""Map progress: a bar in a kernel, one updating line on stderr elsewhere, on the real platform."""

from __future__ import annotations

import _thread
import re
import threading
import time

import pytest

from jupyter_faas import function
from jupyter_faas.client import function as _function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.ui import frontend as _frontend
from jupyter_faas.ui import progress as _progress
from tests.helpers import wait_for


@function(name="progress_quick")
def quick(x: int) -> int:
    return x


@function(name="progress_nap", concurrency=2)
def nap(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("a negative nap")
    time.sleep(seconds)
    return seconds


@pytest.fixture
def quick_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Maps show their progress after 0.3 s instead of 2 s, so a map of a second or so shows it."""
    monkeypatch.setattr(_function, "PROGRESS_AFTER", 0.3)
    monkeypatch.setattr(_progress, "last_progress", None)


def test_a_long_map_ends_with_a_full_success_bar(
    platform: _platform.Platform, quick_progress: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_frontend, "FRONT_END", "widget")
    assert nap.map([0.3] * 8) == [0.3] * 8  # four rounds at concurrency 2
    progress = _progress.last_progress
    assert progress is not None and progress.bar is not None and progress.label is not None
    assert (progress.bar.value, progress.bar.max, progress.bar.bar_style) == (8, 8, "success")
    assert re.fullmatch(r"8/8 done · 0 errors · [\d.]+/s in [\d.]+ s", progress.label.value)
    assert progress.summary["state"] == "done" and progress.summary["rate"] > 0


def test_a_long_map_with_errors_ends_in_the_danger_style(
    platform: _platform.Platform, quick_progress: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_frontend, "FRONT_END", "widget")
    results = nap.map([0.3, -1, 0.3, -1, 0.3, 0.3], return_exceptions=True)
    assert [type(r).__name__ for r in results].count("ValueError") == 2
    progress = _progress.last_progress
    assert progress is not None and progress.bar is not None and progress.label is not None
    assert (progress.bar.value, progress.bar.bar_style) == (6, "danger")
    assert progress.label.value.startswith("6/6 done · 2 errors · ")


def test_in_a_terminal_progress_is_one_updating_line_on_stderr(
    platform: _platform.Platform, quick_progress: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nap.map([0.3] * 8) == [0.3] * 8
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1  # one line, rewritten in place with \r
    final = err.rstrip("\n").split("\r")[-1].rstrip()
    assert re.fullmatch(r"progress_nap: 8/8 done · 0 errors · [\d.]+/s in [\d.]+ s", final)
    assert _progress.last_progress is not None and _progress.last_progress.bar is None


def test_an_interrupted_map_says_so_and_drops_what_had_not_started(
    platform: _platform.Platform, quick_progress: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = nap.stats()["invocations"]

    def interrupt_once_the_progress_shows() -> None:
        deadline = time.monotonic() + 30
        while _progress.last_progress is None:
            if time.monotonic() > deadline:
                return  # no interrupt: the test then fails on its own, without a stray KeyboardInterrupt
            time.sleep(0.02)
        _thread.interrupt_main()

    interrupter = threading.Thread(target=interrupt_once_the_progress_shows)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        nap.map([0.5] * 8)  # 2 s at concurrency 2
    interrupter.join()
    progress = _progress.last_progress
    assert progress is not None and progress.summary["state"] == "interrupted"
    assert progress.summary["done"] < 8
    final = capsys.readouterr().err.rstrip("\n").split("\r")[-1].rstrip()
    assert re.match(r"progress_nap: interrupted at \d/8 · 0 errors", final)
    # The ones running finish and are recorded; the rest were dropped. The countdown starts once none is in flight.
    wait_for(lambda: platform.seconds_to_scale_to_zero() is not None, timeout=30, message="the running ones")
    assert progress.summary["done"] <= nap.stats()["invocations"] - before < 8


def test_a_fast_map_makes_no_progress_at_all(
    platform: _platform.Platform, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_progress, "last_progress", None)
    monkeypatch.setattr(_frontend, "FRONT_END", "widget")
    assert quick.map(range(200)) == list(range(200))
    assert _progress.last_progress is None
    assert capsys.readouterr().err == ""
