"""Idempotency-Key: a repeated request gets the first one's answer, and the function never runs twice."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_faas.config import PRIVATE_FILE_MODE, private_dir
from jupyter_faas.gateway.answers import HttpError, Reply

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
IDEMPOTENCY_FOLDER = "idempotency"
# Every this many answers kept, the folder is swept of those past their time to live, and then of the oldest
# beyond these bounds: a caller who sends a new key with every request cannot fill the disk.
SWEEP_EVERY = 500
MAX_KEPT_ANSWERS = 100_000
MAX_KEPT_BYTES = 2**30
# Answers that mean the function never ran are not kept: a repeat may run it.
_NEVER_RAN = (429, 503)


def fingerprint(content_type: str, body: bytes, asynchronous: bool) -> str:
    """What makes two requests with one key the same request: the body, its type, and sync or async."""
    digest = hashlib.sha256()
    for part in (content_type.split(";")[0].strip().lower().encode(), b"async" if asynchronous else b"sync", body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def checked_key(value: str) -> str:
    if not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise HttpError(
            400, "BadRequest", f"{HEADER} is 1 to {MAX_KEY_LENGTH} printable characters, e.g. a random UUID"
        )
    return value


@dataclass
class _Flight:
    """A first request still running; repeats wait for it."""

    fingerprint: str
    done: asyncio.Future[None]
    marked: asyncio.Future[None] | None = None
    invocation: list[str] = field(default_factory=list)


Run = Callable[[Callable[[str], None]], Awaitable[Reply]]


class Idempotency:
    """Answers kept by (caller, function, key) for `ttl` seconds, one file each in `folder` (or in memory).

    Only the requests running now are held in memory. An answer is written once the function was submitted;
    a sync request cut short by a restart leaves its mark, and a repeat then learns it may have run (409), never
    running it again. Runs on the event loop; files are read and written in a thread.
    """

    def __init__(self, folder: Path | None, ttl: float) -> None:
        self.folder = folder
        self.ttl = ttl
        self._flights: dict[str, _Flight] = {}
        self._memory: dict[str, dict[str, Any]] = {}
        self._written = 0
        if folder is not None:
            private_dir(folder)

    @staticmethod
    def entry(caller: str, function: str, key: str) -> str:
        return hashlib.sha256(f"{caller}\0{function}\0{key}".encode()).hexdigest()

    async def run_once(self, entry: str, print_: str, run: Run) -> tuple[Reply, str | None]:
        """The answer to the request, run by `run` if it is the first (None); or the first's kept answer, with the
        id of the invocation that made it."""
        loop = asyncio.get_running_loop()
        while True:
            flight = self._flights.get(entry)
            if flight is not None:
                if flight.fingerprint != print_:
                    raise _reused()
                await asyncio.shield(flight.done)
                continue
            kept = await asyncio.to_thread(self._read, entry)
            if entry in self._flights:
                continue  # a first request began while the file was read
            if kept is not None:
                return _answer(kept, print_), str(kept.get("invocation"))
            flight = _Flight(print_, loop.create_future())
            self._flights[entry] = flight
            break
        try:
            return await self._first(entry, flight, run), None
        finally:
            del self._flights[entry]
            flight.done.set_result(None)

    async def _first(self, entry: str, flight: _Flight, run: Run) -> Reply:
        def submitted(invocation_id: str) -> None:
            flight.invocation.append(invocation_id)
            mark = {"fingerprint": flight.fingerprint, "created": time.time(), "invocation": invocation_id}
            # Written before the answer: a restart meanwhile leaves the mark, and a repeat never runs it again.
            flight.marked = asyncio.ensure_future(asyncio.to_thread(self._write, entry, mark))

        try:
            reply = await run(submitted)
        except HttpError as error:
            await self._settle(entry, flight, _stored_error(error))
            raise
        await self._settle(entry, flight, _stored_reply(reply))
        return reply

    async def _settle(self, entry: str, flight: _Flight, answer: dict[str, Any]) -> None:
        if flight.marked is not None:
            await flight.marked
        if not flight.invocation or answer["status"] in _NEVER_RAN:
            if flight.marked is not None:
                await asyncio.to_thread(self._remove, entry)
            return  # never ran: a repeat may run it
        kept = {
            "fingerprint": flight.fingerprint,
            "created": time.time(),
            "invocation": flight.invocation[0],
            "answer": answer,
        }
        await asyncio.to_thread(self._write, entry, kept)

    # -- files ---------------------------------------------------------------------------------------

    def _path(self, entry: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{entry}.json"

    def _read(self, entry: str) -> dict[str, Any] | None:
        if self.folder is None:
            kept = self._memory.get(entry)
        else:
            try:
                kept = json.loads(self._path(entry).read_bytes())
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                kept = None  # a damaged entry is no answer; it is removed below
        if kept is None or not isinstance(kept, dict) or kept.get("created", 0) + self.ttl < time.time():
            self._remove(entry)
            return None
        return kept

    def _write(self, entry: str, kept: dict[str, Any]) -> None:
        if self.folder is None:
            self._memory[entry] = kept
            self._sweep_memory()
            return
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(json.dumps(kept).encode())
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, PRIVATE_FILE_MODE)
            os.replace(temporary, self._path(entry))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._written += 1
        if self._written % SWEEP_EVERY == 0:
            self.sweep()

    def _remove(self, entry: str) -> None:
        if self.folder is None:
            self._memory.pop(entry, None)
            return
        with contextlib.suppress(OSError):
            self._path(entry).unlink()

    def _sweep_memory(self) -> None:
        now = time.time()
        for entry, kept in list(self._memory.items()):
            if kept["created"] + self.ttl < now:
                del self._memory[entry]

    def sweep(self, max_answers: int = MAX_KEPT_ANSWERS, max_bytes: int = MAX_KEPT_BYTES) -> int:
        """Remove the answers past their time to live, then the oldest beyond `max_answers` or `max_bytes`;
        how many. A repeat of a request whose answer was removed early runs it again."""
        if self.folder is None:
            before = len(self._memory)
            self._sweep_memory()
            while len(self._memory) > max_answers:
                del self._memory[min(self._memory, key=lambda entry: self._memory[entry]["created"])]
            return before - len(self._memory)
        removed = 0
        limit = time.time() - self.ttl
        kept: list[tuple[float, int, Path]] = []
        for path in self.folder.glob("*.json"):
            with contextlib.suppress(OSError):
                status = path.stat()
                if status.st_mtime < limit:
                    path.unlink()
                    removed += 1
                else:
                    kept.append((status.st_mtime, status.st_size, path))
        kept.sort()  # oldest first
        count, total = len(kept), sum(size for _, size, _ in kept)
        for _, size, path in kept:
            if count <= max_answers and total <= max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
            count, total = count - 1, total - size
        return removed


def _reused() -> HttpError:
    return HttpError(
        422,
        "IdempotencyKeyReused",
        f"this {HEADER} was used with another request (a different body, content type, or sync/async); "
        "use a new key for a new request",
    )


def _stored_reply(reply: Reply) -> dict[str, Any]:
    if isinstance(reply.body, bytes):
        return {"status": reply.status, "base64": base64.b64encode(reply.body).decode()}
    return {"status": reply.status, "json": reply.body}


def _stored_error(error: HttpError) -> dict[str, Any]:
    return {"status": error.status, "error": error.body()["error"], "retry_after": error.retry_after}


def _answer(kept: dict[str, Any], print_: str) -> Reply:
    """The kept answer as the first request got it (an error raised as it was), or 409 for one cut short."""
    if kept.get("fingerprint") != print_:
        raise _reused()
    answer = kept.get("answer")
    if answer is None:
        raise HttpError(
            409,
            "IdempotencyInterrupted",
            f"the first request with this {HEADER} was cut short by a restart of the server while its invocation "
            f"{kept.get('invocation')} ran; whether it finished is unknown, so it is not run again "
            "(send a new key to run it)",
            invocation=kept.get("invocation"),
        )
    if "error" in answer:
        error = dict(answer["error"])
        raise HttpError(
            int(answer["status"]), str(error.pop("type")), str(error.pop("message")), answer.get("retry_after"), **error
        )
    if "base64" in answer:
        return Reply(int(answer["status"]), base64.b64decode(answer["base64"]))
    return Reply(int(answer["status"]), answer["json"])
