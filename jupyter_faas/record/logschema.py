"""The invocation log's table: columns from InvocationRecord, creating and upgrading it, rows in and out."""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import sqlite3
import time
from dataclasses import fields
from datetime import datetime
from itertools import chain
from operator import attrgetter
from typing import Any

from jupyter_faas.record.records import InvocationRecord

TABLE = "invocations"
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(InvocationRecord))
# The annotations are strings (postponed evaluation); the first name says the storage type.
# A status is one of a few strings (RecordStatus, a Literal), stored as text.
_KINDS: dict[str, str] = {
    f.name: "str" if f.type == "RecordStatus" else str(f.type).split("|")[0].strip() for f in fields(InvocationRecord)
}
_SQL_TYPES = {"str": "TEXT", "float": "REAL", "int": "INTEGER", "bool": "INTEGER"}
_CONVERT: dict[str, Any] = {"str": str, "float": float, "int": int, "bool": bool}
BOOL_COLUMNS = tuple(name for name in COLUMNS if _KINDS[name] == "bool")
_INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_row = attrgetter(*COLUMNS)
# sqlite3 releases the GIL around every statement step, and getting it back can take a whole switch
# interval (5 ms) while any other thread computes: row by row, that would be ~200 rows/s. So rows go
# many to one statement, in power-of-two sizes so that only a dozen statements are ever compiled.
_MAX_ROWS_PER_STATEMENT = 1024
_rows_per_statement = 0

# Errors that say "this record cannot be stored", not "the database is unavailable": retrying cannot help.
DATA_ERRORS = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    OverflowError,
    TypeError,
    ValueError,
    AttributeError,
)


def columns_of(conn: sqlite3.Connection) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")]


def ensure_schema(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Idempotent, so any number of processes may do it at once, on a new file or an old one."""
    deadline = time.monotonic() + busy_timeout
    # Switching to WAL needs the file to itself and can report "locked" without waiting, so retry it here.
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = ", ".join(f"{name} {_SQL_TYPES[_KINDS[name]]}" for name in COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
        # A log written before a record field existed gets the column; its old rows read back None.
        present = set(columns_of(conn))
        for name in COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {_SQL_TYPES[_KINDS[name]]}")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_function_submitted ON {TABLE} (function, submitted)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_submitted ON {TABLE} (submitted)")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back by itself (disk full, I/O error), and then ROLLBACK fails too.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _sanitized(record: Any) -> tuple[Any, ...]:
    """A record's row with each value coerced to its column's type, e.g. numpy numbers to Python ones."""
    values = []
    for name in COLUMNS:
        value = getattr(record, name)
        values.append(None if value is None else _CONVERT[_KINDS[name]](value))
    return tuple(values)


@functools.cache
def _insert_sql(rows: int) -> str:
    values = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    return f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES " + ", ".join([values] * rows)


def _statement_size(conn: sqlite3.Connection) -> int:
    global _rows_per_statement
    if not _rows_per_statement:
        variables = 999  # the compiled-in default of SQLite before 3.32, when the limit cannot be asked
        with contextlib.suppress(AttributeError, sqlite3.Error):
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[attr-defined, unused-ignore]  # 3.11+
        fit = max(1, min(_MAX_ROWS_PER_STATEMENT, variables // len(COLUMNS)))
        _rows_per_statement = 1 << (fit.bit_length() - 1)
    return _rows_per_statement


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    per = _statement_size(conn)
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = per if left >= per else 1 << (left.bit_length() - 1)
        conn.execute(_insert_sql(size), list(chain.from_iterable(rows[start : start + size])))
        start += size


def insert_chunk(conn: sqlite3.Connection, chunk: list[Any]) -> tuple[int, list[str]]:
    """Commit one chunk in one short transaction; returns (rows written, why each unstorable record was dropped)."""
    try:
        rows: list[tuple[Any, ...]] | None = [_row(r) for r in chunk]
    except DATA_ERRORS:
        rows = None
    if rows is not None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _insert_rows(conn, rows)
            conn.execute("COMMIT")
            return len(rows), []
        except DATA_ERRORS:
            rollback(conn)
        except BaseException:
            rollback(conn)
            raise
    # Some record cannot be stored as it is: go one by one, so only the bad ones are dropped.
    dropped: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for record in chunk:
            try:
                conn.execute(_INSERT, _sanitized(record))
            except DATA_ERRORS as e:
                dropped.append(f"{getattr(record, 'id', record)!r}: {e}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return len(chunk) - len(dropped), dropped


def since_time(since: float | datetime | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()  # a naive datetime is local time, like time.time()
    if isinstance(since, bool) or not isinstance(since, numbers.Real):
        raise TypeError(f"since must be a unix time in seconds or a datetime, got {since!r}")
    value = float(since)
    if math.isnan(value):
        raise ValueError(f"since must be a unix time in seconds or a datetime, got {since!r}")
    return value


def select_rows(
    conn: sqlite3.Connection, function: str | None, since: float | None, limit: int | None
) -> list[tuple[Any, ...]]:
    present = set(columns_of(conn))
    if not present:
        return []  # the file exists but no writer has created the table yet
    # A log from an older version lacks newer columns; those read back as None.
    select = ", ".join(name if name in present else "NULL" for name in COLUMNS)
    where: list[str] = []
    params: list[Any] = []
    if function is not None:
        where.append("function = ?")
        params.append(function)
    if since is not None:
        where.append("submitted >= ?")
        params.append(since)
    sql = f"SELECT {select} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if limit is None:
        return conn.execute(sql + " ORDER BY submitted, rowid", params).fetchall()
    rows = conn.execute(sql + " ORDER BY submitted DESC, rowid DESC LIMIT ?", [*params, limit]).fetchall()
    rows.reverse()
    return rows
