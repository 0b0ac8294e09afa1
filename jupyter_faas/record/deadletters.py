"""Invocations that still failed after their retries: an index in memory, their inputs on disk, bounded by bytes.

Over 400 lines: one class, DeadLetters, whose index, files and byte budget change together under one lock.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.config import open_private, private_dir, write_private
from jupyter_faas.contract import is_json
from jupyter_faas.errors import type_name

log = logging.getLogger("jupyter_faas.deadletters")

# The index is kept in memory: past this many letters the oldest go first, whatever their size.
MAX_DEAD_LETTERS = 10_000
# A JSON input up to this size is shown decoded in the list; a bigger one as its size only.
PREVIEW_BYTES = 4096
# Most letters one page of the list holds, and how many it holds when the caller does not say.
MAX_PAGE = 1000
DEFAULT_PAGE = 100


class DamagedLetter(Exception):
    """A letter whose input cannot be read back (its body file is missing, cut short or unreadable)."""


@dataclass
class Page:
    """One page of the list, oldest first: `next` is the id to pass as `after` for the next page, or None."""

    letters: list[dict[str, Any]]
    next: str | None
    total: int
    skipped: int
    damaged: list[str] = field(default_factory=list)


class DeadLetters:
    """Failed invocations with their inputs, kept across restarts (or in memory without a state dir).

    On disk: `dead-letters.jsonl` is an index (one JSON line per letter, and a `{"removed": id}` line per
    discarded one), and `dead-letters/` holds each letter's input in a file of its own. Only the index is
    ever held in memory. A server and its kernels share the files: writes hold a file lock, and each
    process reads what the others appended since it last looked. Letters (index line and input) are
    bounded by `faas.deadletters.max-bytes` in all: past it the oldest go first.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._letters: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # In memory only (no state dir, or one that cannot be written): the inputs themselves.
        self._bodies: dict[str, bytes] = {}
        self._bytes = 0
        self._skipped = 0
        # How far the index was read: its inode and the offset after the last whole line.
        self._read_as: tuple[int, int] | None = None
        self._dead_lines = 0
        # Bytes of index lines no longer in force (removed letters and their removal lines), until a compaction.
        self._dead_bytes = 0
        self._migrated = False
        if path is not None:
            try:
                private_dir(path.parent)
                private_dir(self.bodies)
            except OSError as e:
                warnings.warn(f"jupyter_faas: dead letters will be kept in memory only: {e}", stacklevel=2)
                self.path = None
                return
            with self._lock, self._file_lock():
                self._catch_up()
                # Letters written under a larger bound (or by an older version, without one) are trimmed now.
                self._make_room(0, _config.deadletters_max_bytes(), adding=False)
                if self._needs_compaction():
                    self._compact()

    @property
    def bodies(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name.removesuffix(".jsonl"))

    def _body_file(self, letter_id: str) -> Path:
        # Ids are made by the platform; any other name is hashed so that it never becomes a path.
        plain = letter_id.replace("-", "").replace("_", "").isalnum() and len(letter_id) <= 100
        return self.bodies / f"{letter_id if plain else hashlib.sha256(letter_id.encode()).hexdigest()}.body"

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Across processes: one writes the index or the inputs at a time."""
        assert self.path is not None
        with os.fdopen(open_private(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reading the index -------------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Apply what was appended to the index since it was last read; all of it again if it was replaced."""
        assert self.path is not None
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return
        except OSError as e:
            warnings.warn(f"jupyter_faas: cannot read the dead letters in {self.path}: {e}", stacklevel=3)
            return
        with file:
            stat = os.fstat(file.fileno())
            inode, offset = self._read_as or (None, 0)
            if inode != stat.st_ino or stat.st_size < offset:
                self._letters.clear()
                self._bytes, self._skipped, self._dead_lines, self._dead_bytes, offset = 0, 0, 0, 0, 0
            if stat.st_size == offset:
                self._read_as = (stat.st_ino, offset)
                return
            file.seek(offset)
            damaged = 0
            # Line by line: an index written by an older version holds whole inputs in base64.
            for line in file:
                if not line.endswith(b"\n"):
                    break  # being appended, or cut short by a crash: read again once whole
                offset += len(line)
                if not self._apply(line):
                    damaged += 1
            self._read_as = (stat.st_ino, offset)
        if damaged:
            self._skipped += damaged
            warnings.warn(f"jupyter_faas: skipped {damaged} damaged line(s) in {self.path}", stacklevel=3)

    def _apply(self, line: bytes) -> bool:
        """One index line; False if it is damaged (it is then skipped, and counted)."""
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise TypeError
            if "removed" in entry:
                self._forget(str(entry["removed"]))
                self._dead_lines += 2
                self._dead_bytes += len(line)
                return True
            if "body" in entry:
                entry = self._migrate(entry)
            letter_id = str(entry["id"])
            for key, kind in (("function", str), ("content_type", str), ("bytes", int), ("error", dict)):
                if not isinstance(entry[key], kind):
                    raise TypeError
        except (ValueError, KeyError, TypeError, binascii.Error, OSError):
            self._dead_lines += 1
            self._dead_bytes += len(line)
            return False
        if letter_id in self._letters:
            self._forget(letter_id)
            self._dead_lines += 1
        written = len(line)
        if entry.pop("_migrated", False):
            # Its line, input inline, is replaced at the next compaction by one without it.
            self._dead_bytes += len(line)
            written = len(_line(entry))
        entry["_line"] = written
        entry["_cost"] = written + entry["bytes"]
        self._letters[letter_id] = entry
        self._bytes += entry["_cost"]
        return True

    def _migrate(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A letter of the older format, its input inline in base64: the input goes to a body file."""
        body = base64.b64decode(entry.pop("body"), validate=True)
        write_private(self._body_file(str(entry["id"])), body)
        self._migrated = True  # the index is rewritten without the inline input
        preview = _preview(str(entry.get("content_type", "")), body)
        return {**entry, "bytes": len(body), "input": preview, "_migrated": True}

    def _forget(self, letter_id: str) -> dict[str, Any] | None:
        letter = self._letters.pop(letter_id, None)
        if letter is not None:
            self._bytes -= letter["_cost"]
            self._dead_bytes += letter.get("_line", 0)  # its line stays in the index until a compaction
            self._bodies.pop(letter_id, None)
        return letter

    def _needs_compaction(self) -> bool:
        if self._migrated or self._dead_lines > max(100, len(self._letters)):
            return True
        return self._dead_bytes > _slack(_config.deadletters_max_bytes())

    def _compact(self) -> None:
        """Rewrite the index with the live letters only; damaged lines are kept aside, never silently lost."""
        assert self.path is not None
        entries: list[tuple[bytes, dict[str, Any] | None]] = []
        removed: set[str] = set()
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if isinstance(entry, dict) and "removed" in entry:
                    removed.add(str(entry["removed"]))
                else:
                    entries.append((line, entry if isinstance(entry, dict) else None))
        lines: dict[str, bytes] = {}
        damaged = []
        for line, entry in entries:
            letter_id = None if entry is None else str(entry.get("id"))
            if letter_id is not None and letter_id in self._letters:
                if "body" not in entry:  # type: ignore[operator]
                    lines[letter_id] = line  # the last line of an id is the one in force
            elif letter_id is None or letter_id not in removed:
                damaged.append(line)
        if damaged:
            with os.fdopen(open_private(self.path.with_suffix(".damaged"), os.O_WRONLY | os.O_APPEND), "ab") as out:
                out.write(b"".join(damaged))
        # In the order of the index in memory; migrated letters are written again from it.
        written = []
        self._bytes = 0
        for key, letter in self._letters.items():
            line = lines.get(key) or _line(letter)
            letter["_line"], letter["_cost"] = len(line), len(line) + letter["bytes"]
            self._bytes += letter["_cost"]
            written.append(line)
        text = b"".join(written)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".dead-letters.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(text)
            os.replace(temporary, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            warnings.warn(f"jupyter_faas: could not update {self.path}: {e}", stacklevel=3)
            return
        stat = self.path.stat()
        self._read_as = (stat.st_ino, stat.st_size)
        self._dead_lines = 0
        self._dead_bytes = 0
        self._migrated = False

    # -- writing -----------------------------------------------------------------------------------------

    def add(
        self,
        letter_id: str,
        function: str,
        version: str,
        content_type: str,
        body: bytes,
        error: dict[str, Any],
        source: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Keep a letter; `source` says where its input came from (a file trigger's path), for the replay."""
        limit = _config.deadletters_max_bytes()
        letter: dict[str, Any] = {
            "id": letter_id,
            "function": function,
            "version": version,
            "failed_at": time.time(),
            "content_type": content_type,
            "bytes": len(body),
            "error": error,
            "input": _preview(content_type, body),
        }
        if source is not None:
            letter["source"] = source
        line = _line(letter)
        if len(line) + len(body) > limit - _slack(limit):
            # Kept, so that the failure is known, but without its input: it alone is past the bound.
            letter["input_dropped"] = (
                f"the input ({len(body)} bytes) is larger than faas.deadletters.max-bytes ({limit} bytes); "
                "it was not kept"
            )
            letter["bytes"], body = 0, b""
            line = _line(letter)
        with self._lock:
            if self.path is not None:
                try:
                    with self._file_lock():
                        self._catch_up()
                        self._make_room(len(line) + len(body), limit)
                        if body:
                            write_private(self._body_file(letter_id), body)
                        self._append(line)
                        self._catch_up()
                        if self._needs_compaction():
                            self._compact()
                    return letter
                except OSError as e:
                    warnings.warn(f"jupyter_faas: dead letter {letter_id} kept in memory only: {e}", stacklevel=2)
            self._make_room(len(line) + len(body), limit)
            letter["_cost"] = len(line) + len(body)
            self._forget(letter_id)
            self._letters[letter_id] = letter
            self._bodies[letter_id] = body
            self._bytes += letter["_cost"]
        return letter

    def _make_room(self, cost: int, limit: int, adding: bool = True) -> None:
        """Drop the oldest letters until `cost` more bytes (and one more letter) fit.

        Live letters keep within the bound less a slack for index lines no longer in force; the index is
        compacted before those pass the slack, so that the files together stay within the bound.
        """
        dropped = []
        room = limit - _slack(limit)
        most = MAX_DEAD_LETTERS - 1 if adding else MAX_DEAD_LETTERS
        while self._letters and (self._bytes + cost > room or len(self._letters) > most):
            oldest = next(iter(self._letters))
            dropped.append(oldest)
            self._remove_locked(oldest)
        if dropped:
            log.warning(
                "jupyter-faas: dropped %d oldest dead letter(s) to stay within faas.deadletters.max-bytes (%d bytes)",
                len(dropped), limit,
            )  # fmt: skip

    def _append(self, line: bytes) -> None:
        assert self.path is not None
        with os.fdopen(open_private(self.path, os.O_RDWR | os.O_APPEND), "r+b") as file:
            size = os.fstat(file.fileno()).st_size
            if size:
                # A line cut short by a crash must not swallow this one.
                file.seek(size - 1)
                if file.read(1) != b"\n":
                    line = b"\n" + line
            file.write(line)

    def _remove_locked(self, letter_id: str) -> bool:
        if self._forget(letter_id) is None:
            return False
        if self.path is not None:
            self._append(_line({"removed": letter_id}))
            with contextlib.suppress(FileNotFoundError):
                self._body_file(letter_id).unlink()
        return True

    def remove(self, letter_id: str) -> bool:
        with self._lock:
            if self.path is None:
                return self._forget(letter_id) is not None
            with self._file_lock():
                self._catch_up()
                removed = self._remove_locked(letter_id)
                self._catch_up()
                if self._needs_compaction():
                    self._compact()
            return removed

    # -- reading -----------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self.path is not None:
            self._catch_up()

    def get(self, letter_id: str) -> dict[str, Any] | None:
        """A letter's index entry (its input is read with body())."""
        with self._lock:
            self._refresh()
            letter = self._letters.get(letter_id)
        return None if letter is None else _public(letter)

    def body(self, letter_id: str) -> bytes:
        """A letter's input, read from disk; DamagedLetter if it cannot be read back whole."""
        with self._lock:
            self._refresh()
            letter = self._letters.get(letter_id)
            if letter is None:
                raise KeyError(letter_id)
            if self.path is None or letter_id in self._bodies:
                return self._bodies.get(letter_id, b"")
        if letter.get("input_dropped"):
            raise DamagedLetter(letter["input_dropped"])
        if letter["bytes"] == 0:
            return b""
        try:
            body = self._body_file(letter_id).read_bytes()
        except OSError as e:
            raise DamagedLetter(f"its input cannot be read: {e.strerror or e}") from None
        if len(body) != letter["bytes"]:
            raise DamagedLetter(f"its input is {len(body)} bytes on disk, not the {letter['bytes']} it was")
        return body

    def page(self, limit: int = DEFAULT_PAGE, after: str | None = None, function: str | None = None) -> Page:
        """Up to `limit` letters, oldest first, from after the cursor `after` (a page's `next`); of one function's.

        The cursor is a letter's time and id, so a page can be read after letters of the one before were
        replayed or discarded. Each letter whose input file is gone is flagged `damaged`.
        """
        with self._lock:
            self._refresh()
            chosen_ones = [x for x in self._letters.values() if function is None or x["function"] == function]
            ordered = sorted(chosen_ones, key=_order)
            total, skipped, in_memory = len(ordered), self._skipped, self.path is None
        start = 0
        if after is not None:
            cursor = _parse_cursor(after)
            start = next((n for n, letter in enumerate(ordered) if _order(letter) > cursor), len(ordered))
        chosen = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
        letters, damaged = [], []
        for letter in chosen:
            shown = _public(letter)
            if not in_memory and letter["bytes"] and not self._body_file(letter["id"]).is_file():
                shown["damaged"] = "its input file is missing; it cannot be replayed"
                damaged.append(letter["id"])
            letters.append(shown)
        cursor_next = _cursor(chosen[-1]) if has_more and chosen else None
        return Page(letters, cursor_next, total, skipped, damaged)

    def list(self) -> list[dict[str, Any]]:
        """Every letter's index entry, oldest first."""
        letters: list[dict[str, Any]] = []
        after = None
        while True:
            page = self.page(MAX_PAGE, after)
            letters.extend(page.letters)
            if page.next is None:
                return letters
            after = page.next


def dead_letters_path(state_dir: Path) -> Path:
    return state_dir / "dead-letters.jsonl"


def keep_if_failed(
    letter_id: str,
    function: str,
    version: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: BaseException | None,
) -> None:
    """A queued call that failed for good becomes a dead letter of the state dir, with its input; None: it did not."""
    if error is None:
        return
    # In the JSON form an HTTP replay can send: positional arguments as an array, keywords as an object.
    body = json.dumps(list(args) if not kwargs else {**kwargs}, default=repr).encode()
    kind = type_name(error)
    DeadLetters(dead_letters_path(_config.state_dir())).add(
        letter_id, function, version, "application/json", body, {"type": kind, "message": str(error)}
    )


def _slack(limit: int) -> int:
    """The part of the bound left for index lines no longer in force (compacted away past it)."""
    return limit // 8


def _order(letter: dict[str, Any]) -> tuple[float, str]:
    failed_at = letter.get("failed_at")
    return (float(failed_at) if isinstance(failed_at, int | float) else 0.0, str(letter["id"]))


def _cursor(letter: dict[str, Any]) -> str:
    at, letter_id = _order(letter)
    return f"{at!r}/{letter_id}"


def _parse_cursor(text: str) -> tuple[float, str]:
    """ValueError unless `text` is a cursor that page() made."""
    at, _, letter_id = text.partition("/")
    return (float(at), letter_id)


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps({k: v for k, v in entry.items() if not k.startswith("_")}) + "\n").encode()


def _public(letter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in letter.items() if not k.startswith("_")}


def _preview(content_type: str, body: bytes) -> Any:
    """The input as the list shows it: decoded if it is small JSON, its size otherwise."""
    if len(body) <= PREVIEW_BYTES and is_json(content_type):
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            pass
    return {"bytes": len(body)}


def whole_input(content_type: str, body: bytes) -> Any:
    """The whole input as one letter's GET shows it: JSON decoded, other bytes in base64."""
    if is_json(content_type):
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            pass
    return {"base64": base64.b64encode(body).decode(), "bytes": len(body)}
