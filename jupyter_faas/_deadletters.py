"""Invocations that still failed after their retries, kept with their input so that they can be replayed."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

# The list is bounded: past this many letters, the oldest go first.
MAX_DEAD_LETTERS = 10_000


class DeadLetters:
    """A list of failed invocations, in a JSON-lines file that survives a restart (or in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._letters: dict[str, dict[str, Any]] = {}
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                warnings.warn(f"jupyter_faas: dead letters will be kept in memory only: {e}", stacklevel=2)
                self.path = None
                return
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        except OSError as e:
            warnings.warn(f"jupyter_faas: cannot read the dead letters in {path}: {e}", stacklevel=3)
            return
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
            self._letters[letter_id] = letter
            if len(self._letters) > MAX_DEAD_LETTERS:
                del self._letters[next(iter(self._letters))]
                self._rewrite()
            elif self.path is not None:
                try:
                    with self.path.open("a") as file:
                        file.write(json.dumps(letter) + "\n")
                except OSError as e:
                    warnings.warn(f"jupyter_faas: dead letter {letter_id} kept in memory only: {e}", stacklevel=2)
        return letter

    def get(self, letter_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._letters.get(letter_id)

    def remove(self, letter_id: str) -> bool:
        with self._lock:
            if self._letters.pop(letter_id, None) is None:
                return False
            self._rewrite()
            return True

    def list(self) -> list[dict[str, Any]]:
        """Every letter, oldest first, with its JSON input decoded where it is JSON."""
        with self._lock:
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
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            warnings.warn(f"jupyter_faas: could not update {self.path}: {e}", stacklevel=3)


def _readable(letter: dict[str, Any]) -> Any:
    from jupyter_faas._endpoints import is_json

    body = base64.b64decode(letter["body"])
    if is_json(letter["content_type"]):
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            pass
    return {"bytes": len(body)}
