"""Invocations that still failed after their retries, kept with their input so that they can be replayed."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_faas.config import append_private, open_private, private_dir
from jupyter_faas.units import is_json

# The list is bounded: past this many letters, the oldest go first.
MAX_DEAD_LETTERS = 10_000


class DeadLetters:
    """A list of failed invocations, in a JSON-lines file that survives a restart (or in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._letters: dict[str, dict[str, Any]] = {}
        # The file as last read: a server and its kernels all append to it, so it is read again on change.
        self._read_as: tuple[int, int] | None = None
        if path is not None:
            try:
                private_dir(path.parent)
            except OSError as e:
                warnings.warn(f"jupyter_faas: dead letters will be kept in memory only: {e}", stacklevel=2)
                self.path = None
                return
            self._load(path)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Across processes: one rewrites the file while none appends to it."""
        assert self.path is not None
        with os.fdopen(open_private(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _reload_if_changed(self) -> None:
        if self.path is None:
            return
        try:
            stat = self.path.stat()
        except OSError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._read_as:
            self._letters = {}
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            stat = path.stat()
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        except OSError as e:
            warnings.warn(f"jupyter_faas: cannot read the dead letters in {path}: {e}", stacklevel=3)
            return
        self._read_as = (stat.st_mtime_ns, stat.st_size)
        damaged = 0
        for line in lines:
            try:
                letter = json.loads(line)
                self._letters[str(letter["id"])] = letter
            except (ValueError, KeyError, TypeError):
                # A line cut short by a crash mid-write; the letters before and after it are whole.
                damaged += 1
        if damaged:
            warnings.warn(f"jupyter_faas: skipped {damaged} damaged line(s) in {path}", stacklevel=3)

    def add(
        self, letter_id: str, function: str, version: str, content_type: str, body: bytes, error: dict[str, Any]
    ) -> dict[str, Any]:
        letter = {
            "id": letter_id,
            "function": function,
            "version": version,
            "failed_at": time.time(),
            "content_type": content_type,
            "body": base64.b64encode(body).decode(),
            "error": error,
        }
        with self._lock:
            if self.path is None:
                self._letters[letter_id] = letter
                if len(self._letters) > MAX_DEAD_LETTERS:
                    del self._letters[next(iter(self._letters))]
                return letter
            try:
                with self._file_lock():
                    self._reload_if_changed()
                    self._letters[letter_id] = letter
                    if len(self._letters) > MAX_DEAD_LETTERS:
                        del self._letters[next(iter(self._letters))]
                        self._rewrite()
                    else:
                        append_private(self.path, json.dumps(letter) + "\n")
                        stat = self.path.stat()
                        self._read_as = (stat.st_mtime_ns, stat.st_size)
            except OSError as e:
                self._letters[letter_id] = letter
                warnings.warn(f"jupyter_faas: dead letter {letter_id} kept in memory only: {e}", stacklevel=2)
        return letter

    def get(self, letter_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._reload_if_changed()
            return self._letters.get(letter_id)

    def remove(self, letter_id: str) -> bool:
        with self._lock:
            if self.path is None:
                return self._letters.pop(letter_id, None) is not None
            with self._file_lock():
                self._reload_if_changed()
                if self._letters.pop(letter_id, None) is None:
                    return False
                self._rewrite()
            return True

    def list(self) -> list[dict[str, Any]]:
        """Every letter, oldest first, with its JSON input decoded where it is JSON."""
        with self._lock:
            self._reload_if_changed()
            letters = list(self._letters.values())
        return [{**letter, "input": _readable(letter)} for letter in letters]

    def _rewrite(self) -> None:
        if self.path is None:
            return
        text = "".join(json.dumps(letter) + "\n" for letter in self._letters.values())
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".dead-letters.")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(text)
            os.replace(temporary, self.path)
            stat = self.path.stat()
            self._read_as = (stat.st_mtime_ns, stat.st_size)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            warnings.warn(f"jupyter_faas: could not update {self.path}: {e}", stacklevel=3)


def dead_letters_path(state_dir: Path) -> Path:
    return state_dir / "dead-letters.jsonl"


def _readable(letter: dict[str, Any]) -> Any:
    body = base64.b64decode(letter["body"])
    if is_json(letter["content_type"]):
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            pass
    return {"bytes": len(body)}
