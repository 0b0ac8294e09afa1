"""The durable invocation log: every record in one SQLite file under the state dir, shared by all processes.

Over 400 lines: the callers' side and the writer thread of InvocationLog share its queue, flags and fork state.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import numbers
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_faas.config import PRIVATE_FILE_MODE, open_private, private_dir
from jupyter_faas.errors import LogError
from jupyter_faas.record.logschema import (
    BOOL_COLUMNS,
    COLUMNS,
    TABLE,
    columns_of,
    ensure_schema,
    insert_chunk,
    rollback,
    select_rows,
    since_time,
)
from jupyter_faas.record.records import InvocationRecord

LOG_FILENAME = "invocations.sqlite"

# How long a writer or reader waits for another process's transaction before it gives up.
BUSY_TIMEOUT = 30.0
# Rows per transaction: no other process waits long for the write lock, even behind a big backlog.
BATCH_ROWS = 10_000
# Other processes add rows this one does not count, so retention recounts at least this often while writing.
RECOUNT_INTERVAL = 60.0
# How long the exit hook waits for the last records; a wedged disk must not hang interpreter exit.
EXIT_TIMEOUT = 5.0


class _Marker:
    """Queued by flush(): the writer signals it once everything queued before it is committed (or failed)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: LogError | None = None


# Connections open in this process right now. A child forked while one is open inherits SQLite's lock
# bookkeeping for that file without the locks themselves, so it must not touch the file at all.
_open_connections = 0
_connections_lock = threading.Lock()
_forked_while_open = False


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    global _open_connections
    with _connections_lock:
        _open_connections += 1
    try:
        if create:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        else:
            # mode=rw: a reader must never create an empty database where the log was deleted.
            uri = f"{path.absolute().as_uri()}?mode=rw"
            conn = sqlite3.connect(uri, timeout=BUSY_TIMEOUT, isolation_level=None, uri=True)
        # WAL with NORMAL: a killed process loses nothing committed; only power loss can drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        _released()
        raise
    return conn


def _released() -> None:
    global _open_connections
    with _connections_lock:
        _open_connections -= 1


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    finally:
        _released()


class InvocationLog:
    """Appends records from any thread without touching disk on the caller's thread; a writer thread commits batches."""

    def __init__(self, state_dir: Path, max_records: int, flush_interval: float = 1.0) -> None:
        if isinstance(max_records, bool) or not isinstance(max_records, numbers.Integral) or max_records < 1:
            raise ValueError(f"max_records must be a positive whole number, got {max_records!r}")
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, numbers.Real):
            raise TypeError(f"flush_interval must be a number of seconds, got {flush_interval!r}")
        if not 0 < flush_interval < math.inf:
            raise ValueError(f"flush_interval must be a positive number of seconds, got {flush_interval!r}")
        state_dir = Path(state_dir)
        self._path: Path = state_dir / LOG_FILENAME
        self._max: int = int(max_records)
        self._interval: float = float(flush_interval)
        try:
            private_dir(state_dir)
            # Mode 0600 whatever the umask; SQLite gives the -wal and -shm files it creates the database's mode.
            os.close(open_private(self._path, os.O_RDWR))
            for older in (f"{self._path}-wal", f"{self._path}-shm"):
                with contextlib.suppress(OSError):
                    os.chmod(older, PRIVATE_FILE_MODE)
        except OSError as e:
            raise LogError(f"cannot create the invocation log folder {state_dir}: {e.strerror or e}") from e
        if _forked_while_open:
            raise self._fork_error()
        try:
            conn = _connect(self._path, create=True)
            try:
                ensure_schema(conn, BUSY_TIMEOUT)
            finally:
                _close(conn)
        except (sqlite3.Error, OSError) as e:
            raise LogError(f"cannot use the invocation log {self._path}: {e}") from e

        self._close_lock: threading.Lock = threading.Lock()
        self._closed: bool = False
        self._reset_writer_state()
        _LOGS.add(self)

    def _reset_writer_state(self) -> None:
        # Appends and the writer share only the deque (its append and popleft are atomic) and a few flags.
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = True  # while true, append wakes the writer; the writer owns this flag once it runs
        self._urgent = False  # a flush or close is waiting: skip the pause between batches
        self._stopping = False
        # Owned by the writer thread:
        self._retry: list[Any] = []
        self._cycle_started = -math.inf
        self._schema_ready = True
        self._row_estimate: int | None = None
        self._counted_at = -math.inf
        self._last_error: LogError | None = None
        self._dropped = 0
        self._dropped_example = ""

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"InvocationLog({str(self._path)!r}, max_records={self._max})"

    def __enter__(self) -> InvocationLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the callers' side: cheap, never touches disk --------------------------------------------------

    def append(self, record: InvocationRecord) -> None:
        self._queue.append(record)
        if self._idle:
            self._wake_writer()

    def extend(self, records: Iterable[InvocationRecord]) -> None:
        self._queue.extend(records)
        if self._idle:
            self._wake_writer()

    def _wake_writer(self) -> None:
        if self._closed:
            raise LogError(f"the invocation log {self._path} is closed")
        self._start_writer()
        self._wake.set()

    def _start_writer(self) -> None:
        if _forked_while_open:
            raise self._fork_error()
        thread = self._thread
        if thread is None or not thread.is_alive():
            # First use, first use in a forked child, or a writer killed by something it could not catch.
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="faas-log-writer", daemon=True)
                    self._thread.start()

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record appended before this call is committed; raise LogError if it could not be."""
        if self._closed:
            return  # close() already flushed, and nothing can be appended since
        self._flush(timeout)

    def _flush(self, timeout: float) -> None:
        if self._thread is None and not self._queue:
            return  # nothing was ever appended (in this process, since a fork)
        marker = _Marker()
        self._queue.append(marker)
        self._urgent = True
        self._start_writer()
        self._wake.set()
        if not marker.done.wait(timeout):
            last = f"; last error: {self._last_error}" if self._last_error else ""
            raise LogError(f"timed out after {timeout}s writing the invocation log {self._path}{last}")
        if marker.error is not None:
            raise LogError(str(marker.error)) from marker.error.__cause__

    def close(self) -> None:
        """Commit what was appended and stop the writer thread. Appending afterwards raises LogError."""
        self._close(30.0)

    def _close(self, timeout: float) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _LOGS.discard(self)
        try:
            if not _forked_while_open:
                self._flush(timeout)
        finally:
            self._stopping = True
            self._idle = True
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def _fork_error(self) -> LogError:
        return LogError(
            f"this process was forked while its parent had the invocation log {self._path} open; "
            "SQLite cannot be used safely here, so this process cannot use the log"
        )

    def _after_fork_in_child(self) -> None:
        # The parent's queued records are the parent's to write; its writer thread does not exist here.
        self._close_lock = threading.Lock()
        self._reset_writer_state()

    # -- the writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        markers: list[_Marker] = []
        try:
            while True:
                self._wait_for_work()
                if self._stopping and not self._queue:
                    return  # close() has flushed already; records it could not write stay unwritten
                self._cycle_started = time.monotonic()
                self._urgent = False  # before draining: a flush queued after the drain sets it again
                records, markers = self._drain()
                error = self._write(records)
                if markers:
                    error = error or self._take_dropped()
                for marker in markers:
                    marker.error = error
                    marker.done.set()
                markers = []
        except BaseException as e:
            # Not even the per-batch handling held; fail the waiting flushes rather than leave them hanging.
            error = LogError(f"the invocation log writer for {self._path} stopped: {e!r}")
            error.__cause__ = e
            self._last_error = error
            for marker in [*markers, *(item for item in list(self._queue) if isinstance(item, _Marker))]:
                marker.error = error
                marker.done.set()
            raise
        finally:
            self._idle = True

    def _wait_for_work(self) -> None:
        if not self._queue and not self._retry and not self._stopping:
            self._idle = True
            # An append that read _idle before it was set queued its record first, so look once more.
            if not self._queue:
                self._wake.wait()
            self._wake.clear()
            self._idle = False
        # Batch: commits are at most about flush_interval apart, but never more often.
        while not self._urgent and not self._stopping:
            delay = self._cycle_started + self._interval - time.monotonic()
            if delay <= 0:
                break
            self._wake.wait(delay)
            self._wake.clear()

    def _drain(self) -> tuple[list[Any], list[_Marker]]:
        records: list[Any] = []
        markers: list[_Marker] = []
        popleft = self._queue.popleft
        while True:
            try:
                item = popleft()
            except IndexError:
                break
            if type(item) is _Marker:
                markers.append(item)
            else:
                records.append(item)
        return records, markers

    def _write(self, records: list[Any]) -> LogError | None:
        """Commit the retried and new records, then apply retention; returns the error, if any, for the flushes."""
        batch = self._retry + records if self._retry else records
        self._retry = []
        if not batch:
            return None
        committed = 0
        written = 0
        conn: sqlite3.Connection | None = None
        try:
            # One connection per batch: between batches this process holds nothing open, so a fork is safe.
            conn = _connect(self._path, create=True)
            if not self._schema_ready:
                ensure_schema(conn, BUSY_TIMEOUT)
                self._schema_ready = True
            for start in range(0, len(batch), BATCH_ROWS):
                chunk = batch[start : start + BATCH_ROWS]
                inserted, dropped = insert_chunk(conn, chunk)
                committed = start + len(chunk)
                written += inserted
                if dropped:
                    self._dropped += len(dropped)
                    self._dropped_example = self._dropped_example or dropped[0]
            self._apply_retention(conn, written)
        except BaseException as e:
            self._retry = batch[committed:]
            if not isinstance(e, Exception):
                raise
            self._schema_ready = False  # the file may have been deleted or replaced; check it on the next try
            self._keep_retry_bounded()
            kept = f"; {len(self._retry)} records kept for the next try" if self._retry else ""
            error = LogError(f"could not write the invocation log {self._path}: {e}{kept}")
            error.__cause__ = e
            self._last_error = error
            return error
        finally:
            if conn is not None:
                _close(conn)
        self._last_error = None
        return None

    def _take_dropped(self) -> LogError | None:
        """Dropped records are lost for good, so the next flush reports them, once."""
        if not self._dropped:
            return None
        error = LogError(
            f"the invocation log {self._path} dropped {self._dropped} records that cannot be stored, "
            f"e.g. {self._dropped_example}"
        )
        self._dropped = 0
        self._dropped_example = ""
        return error

    def _keep_retry_bounded(self) -> None:
        # While the disk stays unwritable, keep no more than retention would keep anyway; drop the oldest.
        excess = len(self._retry) - self._max
        if excess > 0:
            del self._retry[:excess]

    def _apply_retention(self, conn: sqlite3.Connection, written: int) -> None:
        now = time.monotonic()
        if self._row_estimate is not None:
            self._row_estimate += written
            # 1% slack, so a full log is trimmed in batches rather than by a few rows on every commit.
            if self._row_estimate <= self._max + self._max // 100 and now - self._counted_at < RECOUNT_INTERVAL:
                return
        while True:
            # Count inside the write transaction: two processes trimming at once never delete too much.
            conn.execute("BEGIN IMMEDIATE")
            try:
                (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
                excess = min(count - self._max, BATCH_ROWS)
                if excess > 0:
                    conn.execute(
                        f"DELETE FROM {TABLE} WHERE rowid IN "
                        f"(SELECT rowid FROM {TABLE} ORDER BY submitted, rowid LIMIT ?)",
                        (excess,),
                    )
                    count -= excess
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
            if count <= self._max:
                break
        self._row_estimate = count
        self._counted_at = now


def read_invocations(
    state_dir: Path,
    function: str | None = None,
    since: float | datetime | None = None,
    limit: int | None = None,
) -> list[InvocationRecord]:
    """The logged records, oldest first: of one function, submitted at or after `since`, the newest `limit`."""
    if not isinstance(state_dir, str | os.PathLike):
        raise TypeError(f"state_dir must be a folder path, got {state_dir!r}")
    if function is not None and not isinstance(function, str):
        raise TypeError(f"function must be a function name, got {function!r}")
    since_at = since_time(since)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
            raise TypeError(f"limit must be a positive whole number, got {limit!r}")
        if limit < 1:
            raise ValueError(f"limit must be a positive whole number, got {limit!r}")
    path = Path(state_dir) / LOG_FILENAME
    if _forked_while_open:
        raise LogError(
            f"this process was forked while its parent had the invocation log {path} open; "
            "SQLite cannot be used safely here"
        )
    if not path.exists():
        return []
    try:
        conn = _connect(path, create=False)
    except sqlite3.Error as e:
        if not path.exists():
            return []  # deleted between the check and the open
        raise LogError(f"cannot read the invocation log {path}: {e}") from e
    try:
        rows = select_rows(conn, function, since_at, None if limit is None else int(limit))
    except sqlite3.Error as e:
        raise LogError(f"cannot read the invocation log {path}: {e}") from e
    finally:
        _close(conn)
    records = [InvocationRecord(*row) for row in rows]
    for record in records:
        for name in BOOL_COLUMNS:
            value = getattr(record, name)
            if value is not None:
                setattr(record, name, bool(value))
    return records


def read_logged_after(
    state_dir: Path,
    functions: Sequence[str],
    triggers: Sequence[str],
    after: int = 0,
    upto: int | None = None,
    limit: int = 10_000,
) -> tuple[list[InvocationRecord], int]:
    """Records of `functions` started by `triggers`, logged after row `after` (and at or before row `upto`), in
    the order they were logged; and the row to read after next time: every row committed so far was looked at.

    Rows are numbered in commit order, whichever process wrote them: a reader that keeps the returned row as its
    cursor sees each row once, also when other processes write meanwhile.
    """
    path = Path(state_dir) / LOG_FILENAME
    if _forked_while_open:
        raise LogError(f"this process was forked while its parent had the invocation log {path} open")
    if not functions or not triggers or not path.exists():
        return [], after
    try:
        conn = _connect(path, create=False)
    except sqlite3.Error as e:
        if not path.exists():
            return [], after
        raise LogError(f"cannot read the invocation log {path}: {e}") from e
    try:
        present = set(columns_of(conn))
        if not present:
            return [], after
        select = ", ".join(name if name in present else "NULL" for name in COLUMNS)
        marks = ", ".join("?" * len(functions)), ", ".join("?" * len(triggers))
        sql = (
            f"SELECT rowid, {select} FROM {TABLE} WHERE rowid > ? AND rowid <= ? "
            f"AND function IN ({marks[0]}) AND trigger IN ({marks[1]}) ORDER BY rowid LIMIT ?"
        )
        conn.execute("BEGIN")  # one snapshot for both reads: nothing committed between them is skipped
        try:
            (last,) = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {TABLE}").fetchone()
            end = last if upto is None else min(last, upto)
            rows = conn.execute(sql, [after, end, *functions, *triggers, limit]).fetchall()
        finally:
            rollback(conn)
    except sqlite3.Error as e:
        raise LogError(f"cannot read the invocation log {path}: {e}") from e
    finally:
        _close(conn)
    records = [_record_of(row[1:]) for row in rows]
    # Past the last row read only when the answer was whole: a page cut at `limit` resumes after its last row.
    return records, (rows[-1][0] if len(rows) == limit else max(end, after))


def _record_of(row: Sequence[Any]) -> InvocationRecord:
    record = InvocationRecord(*row)
    for name in BOOL_COLUMNS:
        value = getattr(record, name)
        if value is not None:
            setattr(record, name, bool(value))
    return record


# Every open log, for the fork and exit hooks; the writer thread keeps a running log alive by itself.
_LOGS: weakref.WeakSet[InvocationLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _forked_while_open, _connections_lock
    _connections_lock = threading.Lock()
    _forked_while_open = _open_connections > 0
    for log in list(_LOGS):
        log._after_fork_in_child()


@atexit.register
def _close_at_exit() -> None:
    # The writer is a daemon thread: without this, a normal exit would lose up to flush_interval of records.
    for log in list(_LOGS):
        try:
            log._close(EXIT_TIMEOUT)
        except LogError as e:
            print(f"jupyter-faas: {e}", file=sys.stderr)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
