"""The sandbox's output capture on its own: bounded per invocation, cut on characters, passed through between calls."""

from __future__ import annotations

import io
import logging

import pytest

from jupyter_faas.worker import capture as _capture
from jupyter_faas.worker.capture import Captured, CapturingStream, cut_marker


def test_writes_are_kept_in_order_and_merged_per_stream() -> None:
    captured = Captured(100)
    for stream, text in [("stdout", "a"), ("stdout", "b"), ("stderr", "c"), ("stdout", "d"), ("stdout", "")]:
        captured.write(stream, text)
    assert captured.take() == [("stdout", "ab"), ("stderr", "c"), ("stdout", "d")]
    assert captured.take() == []
    captured.write("stderr", "e")
    assert captured.take() == [("stderr", "e")]
    assert captured.kept == 5 and captured.dropped == 0


def test_the_limit_counts_utf8_bytes_and_never_splits_a_character() -> None:
    captured = Captured(7)
    captured.write("stdout", "ab")
    captured.write("stdout", "€€")  # 3 bytes each: 2 + 3 fits, the second would reach 8
    # After the cut nothing more is kept, even what would fit.
    captured.write("stderr", "more")
    assert captured.take() == [("stdout", "ab€")]
    assert captured.kept == 5
    assert captured.dropped == 3 + 4


def test_a_zero_limit_keeps_nothing_and_counts_everything() -> None:
    captured = Captured(0)
    captured.write("stdout", "x" * 1000)
    assert captured.take() == [] and captured.dropped == 1000


def test_the_stream_captures_only_while_an_invocation_runs() -> None:
    original = io.StringIO()
    stream = CapturingStream("stdout", original)
    stream.write("before\n")
    captured = Captured(100)
    _capture.current.captured = captured
    try:
        print("during", file=stream)
        stream.buffer.write("bytes é\n".encode())
        handler = logging.StreamHandler(stream)
        logger = logging.getLogger("faas-capture-test")
        logger.addHandler(handler)
        try:
            logger.warning("logged")
        finally:
            logger.removeHandler(handler)
    finally:
        _capture.current.captured = None
    stream.write("after\n")
    assert original.getvalue() == "before\nafter\n"
    assert captured.take() == [("stdout", "during\nbytes é\nlogged\n")]


def test_the_stream_refuses_bytes_like_a_text_file() -> None:
    with pytest.raises(TypeError, match="must be str, not bytes"):
        CapturingStream("stdout", io.StringIO()).write(b"x")  # type: ignore[arg-type]


def test_the_marker_names_what_was_dropped_and_the_setting() -> None:
    assert cut_marker(12345, 65536) == "[output cut: 12,345 more bytes were dropped; faas.log.max-output is 64KiB]\n"
