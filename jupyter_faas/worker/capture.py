"""A sandbox's stdout, stderr and logging output, captured per invocation within a byte limit."""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from typing import Any, TextIO

# (stream, text) pieces of output, in the order they were written; stream is "stdout" or "stderr".
Segments = list[tuple[str, str]]


# Secret values shorter than this are not redacted: they would blank out ordinary text.
MIN_REDACTED = 4


def byte_length(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def redact(text: str, secrets: dict[str, str]) -> str:
    """The text with each secret's value replaced by its name."""
    for name, value in secrets.items():
        if len(value) >= MIN_REDACTED and value in text:
            text = text.replace(value, f"[secret {name}]")
    return text


class Captured:
    """One invocation's output: what was written up to `limit` bytes, the part not yet sent, and what was cut."""

    def __init__(self, limit: int, secrets: dict[str, str] | None = None) -> None:
        self.limit = limit
        self.secrets = secrets
        self.kept = 0
        self.dropped = 0
        # Set when its invocation has answered: what threads it left behind write after that is dropped.
        self.closed = False
        self._unsent: list[list[str]] = []
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        if self.secrets:
            text = redact(text, self.secrets)
        size = byte_length(text)
        with self._lock:
            if self.closed:
                return
            if self.dropped:
                # Past the cut everything goes, so the kept output is one unbroken beginning.
                self.dropped += size
                return
            room = self.limit - self.kept
            if size > room:
                # Cut on a character boundary: the bytes that fit, less any split character.
                text = text.encode("utf-8", "replace")[: max(0, room)].decode("utf-8", "ignore")
                kept = byte_length(text)
                self.dropped += size - kept
                size = kept
                if not text:
                    return
            self.kept += size
            if self._unsent and self._unsent[-1][0] == stream:
                self._unsent[-1][1] += text
            else:
                self._unsent.append([stream, text])

    def close(self) -> Segments:
        """What is left to send; anything written after is dropped."""
        with self._lock:
            self.closed = True
        return self.take()

    def take(self) -> Segments:
        """The output written since the last take."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
        return [(stream, text) for stream, text in unsent]


_captured: contextvars.ContextVar[Captured | None] = contextvars.ContextVar("faas_captured", default=None)


class _Current:
    """The invocation whose output the streams collect now; None between invocations.

    A context variable, so each task of calls run at once on one event loop writes to its own.
    """

    @property
    def captured(self) -> Captured | None:
        return _captured.get()

    @captured.setter
    def captured(self, value: Captured | None) -> None:
        _captured.set(value)


current = _Current()

# The attribute a thread started during an invocation carries: that invocation's capture, for good.
_OWNER = "_faas_captured"
_UNOWNED = object()


def _destination() -> Captured | None:
    """Where the calling thread's output goes: an invocation's capture, or None to pass through.

    The main thread runs the calls; a thread started by this package belongs to the invocation running
    when it was started (or to its starter's), and one started some other way (_thread) to none.
    """
    thread = threading.current_thread()
    owner = getattr(thread, _OWNER, _UNOWNED)
    if owner is _UNOWNED:
        return current.captured if thread is threading.main_thread() else None
    return owner  # type: ignore[return-value]


def _start_owned(self: threading.Thread) -> None:
    # Its output goes to that invocation, or nowhere once it has answered; never into a later one's.
    setattr(self, _OWNER, _destination())
    _thread_start(self)


_thread_start = threading.Thread.start


class _BinaryView(io.RawIOBase):
    """`sys.stdout.buffer`: bytes written there are decoded and captured like text."""

    def __init__(self, stream: CapturingStream) -> None:
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._stream.write(data.decode("utf-8", "replace"))
        return len(data)


class CapturingStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: during an invocation it captures, otherwise it passes through."""

    def __init__(self, name: str, original: TextIO | None) -> None:
        self._name = name
        self._original = original
        self._buffer = _BinaryView(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def buffer(self) -> _BinaryView:
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._original is None:
            raise io.UnsupportedOperation("fileno")
        return self._original.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        captured = _destination()
        if captured is not None:
            captured.write(self._name, text)
        elif self._original is not None:
            self._original.write(text)
        return len(text)

    def flush(self) -> None:
        if _destination() is None and self._original is not None:
            self._original.flush()


def install() -> None:
    """Route this process's sys.stdout and sys.stderr through the capture.

    The logging module's last-resort handler and any StreamHandler made during a call write to
    sys.stderr as it is then, so their records are captured too. Output is kept apart per invocation:
    the main thread writes to the running one, a thread to the one during which it was started.
    """
    threading.Thread.start = _start_owned  # type: ignore[method-assign]
    if not isinstance(sys.stdout, CapturingStream):
        sys.stdout = CapturingStream("stdout", sys.stdout)
    if not isinstance(sys.stderr, CapturingStream):
        sys.stderr = CapturingStream("stderr", sys.stderr)


def cut_marker(dropped: int, limit: int) -> str:
    """The line that ends output cut at the limit."""
    # Imported here: the sandbox imports this module at start, and units brings dask.utils, which it never needs.
    from jupyter_faas.units import format_size

    return f"[output cut: {dropped:,} more bytes were dropped; faas.log.max-output is {format_size(limit)}]\n"
