"""Asynchronous invocations accepted but not yet settled, one file each, so that a restart accounts for them."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import psutil

from jupyter_faas.config import open_private, private_dir

log = logging.getLogger("jupyter_faas.inflight")


def inflight_path(state_dir: Path) -> Path:
    return Path(state_dir) / "in-flight"


class InFlight:
    """A 202 is answered only once its invocation is written here; it leaves once its outcome is kept.

    What a process that died (a crash, a SIGKILL, a power cut) left here was neither answered nor
    dead-lettered: the next process on this state dir turns it into a dead letter.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is not None:
            private_dir(directory)

    def _file(self, invocation_id: str) -> Path:
        assert self.directory is not None
        # Ids are made by the platform (hex and a counter); the check keeps any other name out of paths.
        if not invocation_id.replace("-", "").isalnum():
            raise ValueError(f"not an invocation id: {invocation_id!r}")
        return self.directory / f"{invocation_id}.json"

    def begin(
        self,
        invocation_id: str,
        function: str,
        version: str,
        content_type: str,
        body: bytes,
        source: dict[str, Any] | None = None,
    ) -> None:
        """`source`: where the input came from when not the body (a file trigger's file), kept for the replay."""
        if self.directory is None:
            return
        entry: dict[str, Any] = {
            "id": invocation_id,
            "pid": os.getpid(),
            "function": function,
            "version": version,
            "content_type": content_type,
            "body": base64.b64encode(body).decode(),
        }
        if source is not None:
            entry["source"] = source
        path = self._file(invocation_id)
        temporary = path.with_suffix(".tmp")
        with os.fdopen(open_private(temporary, os.O_WRONLY | os.O_TRUNC), "w") as file:
            json.dump(entry, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def end(self, invocation_id: str) -> None:
        if self.directory is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._file(invocation_id).unlink()

    def orphans(self) -> list[dict[str, Any]]:
        """Entries of processes that are gone; each is read once, and the caller must settle it."""
        if self.directory is None:
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                pid = int(entry["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half written: its 202 was never sent, since that waits for the rename
            if pid == os.getpid() or (psutil.pid_exists(pid) and _is_faas_process(pid)):
                continue  # its process still runs, and will settle it
            try:
                entry["body"] = base64.b64decode(entry["body"], validate=True)
            except (ValueError, TypeError):
                log.warning("jupyter-faas: skipping the damaged in-flight entry %s", path)
                continue
            found.append(entry)
        return found


def _is_faas_process(pid: int) -> bool:
    """Whether `pid` is a live Python process (a reused pid of another program does not hold entries)."""
    try:
        return "python" in psutil.Process(pid).name().lower()
    except psutil.Error:
        return False
