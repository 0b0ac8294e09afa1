"""Invocations' output shown where they were called: the calling cell's stdout and stderr."""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterable
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from jupyter_faas.record.records import InvocationRecord
from jupyter_faas.worker.capture import Segments

# A waiting caller wakes at least this often, to notice Ctrl-C.
_POLL = 0.05


def header(name: str, invocation_id: str, item: int | None = None) -> str:
    where = "" if item is None else f" · item {item}"
    return f"── {name}{where} · {invocation_id} ──\n"


def _write(segments: Segments) -> None:
    for stream, text in segments:
        (sys.stderr if stream == "stderr" else sys.stdout).write(text)


class CallOutput:
    """Collects a running call's output from platform threads; the caller's thread writes it to the cell.

    Only the thread that runs the cell writes, so output lands in that cell whatever the kernel.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._pieces: queue.SimpleQueue[Segments | None] = queue.SimpleQueue()
        self._started = False

    def collect(self, segments: Segments) -> None:
        self._pieces.put(segments)

    def _show(self, invocation_id: str, segments: Segments) -> None:
        if not self._started:
            self._started = True
            sys.stdout.write(header(self._name, invocation_id))
        _write(segments)

    def wait(self, future: Future[Any]) -> None:
        """Write output as it comes until the invocation ends.

        The platform hands over the last output before it ends the future, and the end itself arrives
        here as None, so the caller wakes at once for either: a call that prints nothing waits no longer.
        """
        invocation_id = getattr(future, "id", "")
        future.add_done_callback(lambda _: self._pieces.put(None))
        while True:
            try:
                # Bounded, so Ctrl-C reaches the cell even on interpreters whose waits ignore signals.
                segments = self._pieces.get(timeout=_POLL)
            except queue.Empty:
                continue
            if segments is None:
                break
            self._show(invocation_id, segments)
        if self._started:
            sys.stdout.flush()
            sys.stderr.flush()


def show_map_output(name: str, shown: list[tuple[int, str, str]], with_output: int, lines: int) -> None:
    """The first lines a map's invocations wrote, in input order, and a count of the rest."""
    if not with_output:
        return
    shown_lines = 0
    for item, invocation_id, text in sorted(shown):
        sys.stdout.write(header(name, invocation_id, item))
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        shown_lines += len(text.splitlines())
    rest_invocations = with_output - len(shown)
    rest_lines = lines - shown_lines
    if rest_lines > 0:
        more = f"{rest_invocations:,} more invocations" if rest_invocations else "the same invocations"
        sys.stdout.write(
            f"… {rest_lines:,} more lines of output from {more} not shown: "
            f"see {name}.logs(), or {name}.invocations[i].output\n"
        )
    sys.stdout.flush()


class Logs(str):
    """Text that shows as itself, not as a quoted string, when it ends a cell."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def logs_text(name: str, records: Iterable[InvocationRecord]) -> Logs:
    """Each record's output under a header line, oldest first."""
    parts = []
    for record in records:
        when = datetime.fromtimestamp(record.submitted).strftime("%H:%M:%S")
        parts.append(f"── {name} · {record.id} · {when} · {record.status} ──\n")
        output = record.output or ""
        parts.append(output if output.endswith("\n") or not output else output + "\n")
    return Logs("".join(parts) if parts else f"(no output from {name}'s recent invocations)\n")
