"""The durable invocation log on real SQLite files: round trips, restarts, several writing processes, kills."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from jupyter_faas.errors import LogError
from jupyter_faas.record import log as _log
from jupyter_faas.record.log import LOG_FILENAME, InvocationLog, read_invocations
from jupyter_faas.record.records import InvocationRecord
from tests.helpers import wait_for

T0 = 1_700_000_000.0


def record(n: int, function: str = "f", submitted: float | None = None, **changes: Any) -> InvocationRecord:
    """A record whose optional fields vary with n, so None, bools and big ints all make the round trip."""
    at = T0 + n if submitted is None else submitted
    values: dict[str, Any] = dict(
        id=f"{function}-{n}", function=function, version=f"v{n % 3}", submitted=at,
        started=None if n % 4 == 3 else at + 0.125, finished=None if n % 4 == 3 else at + 0.3,
        queued_ms=None if n % 4 == 3 else 125.0, cold_start=n % 3 == 0, duration_ms=None if n % 4 == 3 else 175.5,
        latency_ms=300.25 + n / 7, worker=None if n % 4 == 3 else f"tcp://127.0.0.1:{40000 + n % 5}",
        status="ok" if n % 5 else "error", error=None if n % 5 else "ValueError",
        message=None if n % 5 else f"bad input {n} \u2013 \u00e9", attempts=1 + n % 2,
        peak_memory=None if n % 2 else 2**40 + n, memory_limit=256 * 2**20,
    )  # fmt: skip
    values.update(changes)
    return InvocationRecord(**values)


def count_rows(path: Path, where: str = "") -> int:
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        try:
            return conn.execute(f"SELECT count(*) FROM invocations {where}").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return 0  # the writer has created the file, not yet its table
            raise


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# Run in real child processes. Modes: "close" appends and closes; "exit" appends and just exits;
# "forever" appends `count` early records, then late ones at about 40,000 a second until killed.
CHILD = r"""
import sys, time
from pathlib import Path
from jupyter_faas.record.log import InvocationLog
from jupyter_faas.record.records import InvocationRecord

state_dir, tag, count, mode, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])

def record(function, n):
    now = time.time()
    return InvocationRecord(
        id=f"{function}-{n}", function=function, version="v1", submitted=now, started=now, finished=now,
        queued_ms=0.5, cold_start=n % 2 == 0, duration_ms=1.5, latency_ms=2.0, worker="tcp://w:1", status="ok",
        error=None, message=None, attempts=1, peak_memory=n, memory_limit=2**28)

log = InvocationLog(Path(state_dir), 10**6, flush_interval=interval)
early = f"{tag}-early" if mode == "forever" else tag
for n in range(count):
    log.append(record(early, n))
    if n % 100 == 99:
        time.sleep(0.005)  # spread the appends, so the writers of all processes interleave
if mode == "close":
    log.close()
elif mode == "forever":
    n = 0
    while True:
        log.extend([record(f"{tag}-late", n + k) for k in range(200)])
        n += 200
        time.sleep(0.005)
"""


def start_child(state_dir: Path, tag: str, count: int, mode: str, interval: float = 0.1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state_dir), tag, str(count), mode, str(interval)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_while_alive(child: subprocess.Popen[str], condition: Callable[[], Any], message: str) -> None:
    def check() -> Any:
        if child.poll() is not None:
            pytest.fail(f"the child exited with {child.returncode} before {message}:\n{child.stderr.read()}")  # type: ignore[union-attr]
        return condition()

    wait_for(check, timeout=15, message=message)


def finish(child: subprocess.Popen[str]) -> None:
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err


# -- one process ----------------------------------------------------------------------------------------


def test_round_trip_gives_equal_records_newest_last_and_filters(tmp_path: Path) -> None:
    records = [record(n, "f" if n % 3 else "g") for n in range(40)]
    shuffled = random.Random(7).sample(records, len(records))
    with InvocationLog(tmp_path / "a" / "b", max_records=1000) as log:
        for r in shuffled[:30]:
            log.append(r)
        log.extend(shuffled[30:])
        log.flush()
        back = read_invocations(tmp_path / "a" / "b")
    assert back == records  # equal in every field, in submission order whatever the append order
    assert {type(r.cold_start) for r in back} == {bool}
    assert back[3].started is None and back[3].peak_memory is None and back[0].peak_memory == 2**40

    state = str(tmp_path / "a" / "b")  # a str works as well as a Path
    assert read_invocations(state, function="g") == [r for r in records if r.function == "g"]
    assert read_invocations(state, function="nope") == []
    assert read_invocations(state, since=T0 + 30) == records[30:]
    assert read_invocations(state, since=datetime.fromtimestamp(T0 + 30.5)) == records[31:]
    assert read_invocations(state, limit=5) == records[-5:]
    assert read_invocations(state, limit=10**6) == records
    g_since = [r for r in records if r.function == "g" and r.submitted >= T0 + 10]
    assert read_invocations(state, function="g", since=T0 + 10, limit=3) == g_since[-3:]
    assert read_invocations(tmp_path / "never-written") == []


def test_records_survive_a_restart_and_new_ones_append_after_them(tmp_path: Path) -> None:
    tmp_path = tmp_path / "a dir #1?%20"  # characters that mean something in a file: URI
    first = InvocationLog(tmp_path, max_records=1000)
    first.extend(record(n) for n in range(3))
    first.close()
    first.close()  # idempotent
    with pytest.raises(LogError, match="closed"):
        first.append(record(99))

    second = InvocationLog(tmp_path, max_records=1000)
    assert read_invocations(tmp_path) == [record(n) for n in range(3)]
    second.extend([record(3), record(4)])
    second.close()
    assert read_invocations(tmp_path) == [record(n) for n in range(5)]


def test_a_record_becomes_readable_without_flush_within_the_flush_interval(tmp_path: Path) -> None:
    log = InvocationLog(tmp_path, max_records=1000, flush_interval=0.2)
    try:
        log.append(record(1))
        wait_for(lambda: read_invocations(tmp_path) == [record(1)], timeout=5, message="the first record")
        # The writer has just committed: this one waits for the next batch, at most flush_interval later.
        log.append(record(2))
        wait_for(lambda: len(read_invocations(tmp_path)) == 2, timeout=5, message="the second record")
        assert read_invocations(tmp_path) == [record(1), record(2)]
    finally:
        log.close()


def test_retention_keeps_the_newest_max_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_log, "BATCH_ROWS", 7)  # several transactions per batch, for inserts and deletes alike
    records = [record(n) for n in range(200)]
    with InvocationLog(tmp_path, max_records=50, flush_interval=0.05) as log:
        for start in range(0, 200, 40):
            log.extend(random.Random(start).sample(records[start : start + 40], 40))
            log.flush()
            assert count_rows(log.path) == min(50, start + 40)
    assert read_invocations(tmp_path) == records[-50:]

    # A smaller bound applies to what an earlier, larger one kept.
    with InvocationLog(tmp_path, max_records=20) as log:
        log.append(record(500))
    assert read_invocations(tmp_path) == [*records[-19:], record(500)]


def test_a_writer_error_is_kept_for_flush_and_the_records_for_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_log, "BUSY_TIMEOUT", 0.2)
    log = InvocationLog(tmp_path, max_records=1000, flush_interval=0.05)
    blocker = sqlite3.connect(log.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock past the busy timeout
        log.append(record(1))
        with pytest.raises(LogError, match=f"{LOG_FILENAME}: database is locked; 1 records kept") as failed:
            log.flush(timeout=10)
        assert str(log.path) in str(failed.value)
        assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
        blocker.execute("ROLLBACK")
        log.append(record(2))
        log.flush(timeout=10)
        assert read_invocations(tmp_path) == [record(1), record(2)]  # once each
    finally:
        blocker.close()
        log.close()


def test_unstorable_records_are_dropped_alone_and_reported(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    log = InvocationLog(tmp_path, max_records=1000)
    good = record(1)
    coerced = record(2, peak_memory=np.int64(5), latency_ms=Decimal("1.5"))  # cannot be bound as they are
    too_big = record(3, peak_memory=2**70)
    log.extend([good, coerced, too_big, "not a record", record(4)])  # type: ignore[list-item]
    with pytest.raises(LogError, match=r"dropped 2 records that cannot be stored"):
        log.flush()
    log.close()
    back = read_invocations(tmp_path)
    assert [r.id for r in back] == ["f-1", "f-2", "f-4"]
    assert back[1].peak_memory == 5 and type(back[1].peak_memory) is int and back[1].latency_ms == 1.5


def test_a_forked_child_writes_only_its_own_records(tmp_path: Path) -> None:
    log = InvocationLog(tmp_path, max_records=1000, flush_interval=30)
    try:
        log.append(record(1))
        wait_for(lambda: len(read_invocations(tmp_path)) == 1, timeout=5, message="the first commit")
        log.append(record(2))  # waits in the parent's queue for the next batch
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log.append(record(3))
                log.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [r.id for r in read_invocations(tmp_path)] == ["f-1", "f-3"]
        log.flush()
        assert read_invocations(tmp_path) == [record(1), record(2), record(3)]
    finally:
        log.close()


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    for limit in (0, -3):
        with pytest.raises(ValueError, match=f"^limit must be a positive whole number, got {limit}$"):
            read_invocations(tmp_path, limit=limit)
    for limit in ("x", 2.5, True):
        with pytest.raises(TypeError, match="^limit must be a positive whole number, got "):
            read_invocations(tmp_path, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^since must be a unix time in seconds or a datetime, got 'yesterday'$"):
        read_invocations(tmp_path, since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^since must be"):
        read_invocations(tmp_path, since=float("nan"))
    with pytest.raises(TypeError, match="^function must be"):
        read_invocations(tmp_path, function=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records must be a positive whole number"):
        InvocationLog(tmp_path, max_records=0)
    with pytest.raises(ValueError, match="flush_interval must be a positive number"):
        InvocationLog(tmp_path, max_records=10, flush_interval=0)


def test_an_unusable_state_dir_or_file_fails_at_construction_naming_the_path(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for state_dir in (a_file, a_file / "below"):
        with pytest.raises(LogError, match="cannot create the invocation log folder") as failed:
            InvocationLog(state_dir, max_records=10)
        assert str(state_dir) in str(failed.value)
        assert isinstance(failed.value, OSError)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / LOG_FILENAME).write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(LogError, match="not a database") as failed:
        InvocationLog(garbage, max_records=10)
    assert str(garbage / LOG_FILENAME) in str(failed.value)
    with pytest.raises(LogError, match="not a database"):
        read_invocations(garbage)


# -- several processes -----------------------------------------------------------------------------------


def test_three_processes_writing_one_state_dir_at_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "shared"  # not there yet: all three create it, the file and the schema at once
    children = [start_child(state_dir, f"p{k}", 2000, "close", interval=0.02) for k in range(3)]
    for child in children:
        finish(child)
    records = read_invocations(state_dir)
    assert len(records) == 6000
    assert len({r.id for r in records}) == 6000
    for k in range(3):
        assert {r.id for r in records if r.function == f"p{k}"} == {f"p{k}-{n}" for n in range(2000)}
    assert [r.submitted for r in records] == sorted(r.submitted for r in records)
    assert integrity(state_dir / LOG_FILENAME) == "ok"


def test_a_normal_exit_without_close_still_writes_the_last_records(tmp_path: Path) -> None:
    finish(start_child(tmp_path, "quitter", 300, "exit", interval=30))
    assert len(read_invocations(tmp_path, function="quitter")) == 300


def test_sigkill_loses_nothing_committed_and_leaves_the_database_sound(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILENAME
    for round_ in range(5):
        tag = f"k{round_}"
        before = count_rows(path)
        child = start_child(tmp_path, tag, 500, "forever", interval=0.1)
        try:
            # The child never flushes: its writer commits the early records by itself.
            wait_while_alive(
                child,
                lambda tag=tag: count_rows(path, f"WHERE function = '{tag}-early'") == 500,
                f"round {round_}'s early records",
            )
            # Then kill it at a different moment each round, while it keeps appending and committing.
            late = 3000 * round_
            wait_while_alive(
                child,
                lambda tag=tag, late=late: count_rows(path, f"WHERE function = '{tag}-late'") >= late,
                f"{late} late records of round {round_}",
            )
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL

        assert integrity(path) == "ok"
        early = read_invocations(tmp_path, function=f"{tag}-early")
        assert sorted(r.id for r in early) == sorted(f"{tag}-early-{n}" for n in range(500))
        # Batches commit in order, all or nothing: what survived of the late records has no holes.
        late_ids = {int(r.id.rsplit("-", 1)[1]) for r in read_invocations(tmp_path, function=f"{tag}-late")}
        assert late_ids == set(range(len(late_ids)))
        assert len(late_ids) >= late
        assert count_rows(path) == before + 500 + len(late_ids)

    # The database opens and takes new records afterwards.
    after = record(1, "after", submitted=time.time() + 3600)
    with InvocationLog(tmp_path, max_records=10**6) as log:
        log.append(after)
    assert read_invocations(tmp_path, limit=1) == [after]


# -- reading what other processes log, in commit order ----------------------------------------------------------


def test_read_logged_after_sees_each_row_once_in_commit_order_across_writers(tmp_path: Path) -> None:
    first, second = InvocationLog(tmp_path, 1000), InvocationLog(tmp_path, 1000)
    try:
        # Two writers (as a server and a kernel are): submitted times out of order, triggers mixed.
        first.extend([record(n, submitted=1000.0 - n, trigger="http") for n in range(5)])
        first.flush()
        second.extend([record(n, trigger="call") for n in range(5, 8)] + [record(8, function="g", trigger="http")])
        second.flush()
        seen, cursor = _log.read_logged_after(tmp_path, ["f"], ["http", "schedule"])
        assert [r.id for r in seen] == [record(n).id for n in range(5)]  # commit order, not submitted order
        assert all(isinstance(r.cold_start, bool) for r in seen)
        # Nothing new: nothing again, and the cursor stands past the rows that did not match.
        assert _log.read_logged_after(tmp_path, ["f"], ["http"], after=cursor) == ([], cursor)
        first.extend([record(9, trigger="schedule"), record(10, trigger="http")])
        first.flush()
        more, cursor = _log.read_logged_after(tmp_path, ["f", "g"], ["http", "schedule"], after=cursor)
        assert [r.id for r in more] == [record(9).id, record(10).id]
        # A look back up to a cursor, a page at a time, reads each matching row exactly once.
        pages, after = [], 0
        while True:
            page, after = _log.read_logged_after(tmp_path, ["f"], ["http"], after=after, upto=cursor, limit=2)
            pages.append([r.id for r in page])
            if len(page) < 2:
                break
        ids = [i for page in pages for i in page]
        assert ids == [record(n).id for n in (0, 1, 2, 3, 4, 10)] and len(set(ids)) == len(ids)
    finally:
        first.close()
        second.close()


def test_read_logged_after_with_no_log_or_nothing_asked_reads_nothing(tmp_path: Path) -> None:
    assert _log.read_logged_after(tmp_path / "none", ["f"], ["http"], after=3) == ([], 3)
    assert _log.read_logged_after(tmp_path, [], ["http"]) == ([], 0)
