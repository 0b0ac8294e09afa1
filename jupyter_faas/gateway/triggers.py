"""Schedules and file drops that invoke deployed functions, run by the process that owns the platform.

Over 400 lines: TriggerRunner is most of it; the specs, their store and the file progress it drives are short.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import stat as stat_mode
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from croniter import croniter

from jupyter_faas import config as _config
from jupyter_faas.config import open_private, private_dir, write_private
from jupyter_faas.errors import InputRefused, LimitError, TriggerError
from jupyter_faas.units import parse_duration

log = logging.getLogger("jupyter_faas.triggers")

KINDS = ("schedule", "file")
# How often the runner looks for new or removed triggers, and rescans watched folders as a safety net
# under the file watcher (which wakes it at once when a file lands).
_TICK = 0.2
_RESCAN = 2.0
# A dropped file must keep its size and mtime this long before it is taken: its writer may not be done.
_SETTLE = 0.2


def read_dropped_file(path: Path, limit: int) -> bytes:
    """A dropped file's contents, checked before they are read: a regular file, not a link, within `limit`.

    Opened without following a link (one swapped in after the scan is refused too), and never read past
    `limit` even if the file grows meanwhile. InputRefused or OSError otherwise.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as file:
        found = os.fstat(descriptor)
        if not stat_mode.S_ISREG(found.st_mode):
            raise InputRefused(f"{path} is not a regular file; only regular files are read")
        if found.st_size > limit:
            raise InputRefused(_too_large(path, found.st_size, limit))
        data = file.read(limit + 1)
    if len(data) > limit:
        raise InputRefused(_too_large(path, len(data), limit))
    return data


def _too_large(path: Path, size: int, limit: int) -> str:
    return (
        f"{path.name} is {size} bytes; the limit is faas.call.max-bytes = {limit} bytes. "
        "The file was not read and the function did not run; raise faas.call.max-bytes, or take the "
        "path (a str parameter) and read the file in the function"
    )


@dataclass(frozen=True)
class TriggerSpec:
    """What fires a function: a schedule (`every` seconds or a `cron` line), or files dropped in a folder."""

    kind: str
    function: str
    every: float | None = None
    cron: str | None = None
    directory: str | None = None
    pattern: str = "*"
    created: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return f"{self.function}.{self.kind}"

    def describe(self) -> str:
        if self.kind == "schedule":
            return f"every {self.every:g} s" if self.every is not None else f"cron {self.cron!r}"
        return f"files matching {self.pattern!r} in {self.directory}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "description": self.describe()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerSpec:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        spec = cls(**known)
        if spec.kind not in KINDS:
            raise TriggerError(f"unknown trigger kind {spec.kind!r}")
        return spec


def schedule_spec(function: str, every: Any = None, cron: str | None = None) -> TriggerSpec:
    if (every is None) == (cron is None):
        raise TriggerError(
            f"{function}.schedule(): give one of every=... (e.g. '30s') or cron=... (e.g. '*/5 * * * *')"
        )
    if every is not None:
        try:
            seconds = parse_duration(every, "every", minimum=1)
        except LimitError as e:
            raise TriggerError(f"{function}.schedule(): {e}") from None
        return TriggerSpec("schedule", function, every=seconds)
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise TriggerError(
            f"{function}.schedule(): {cron!r} is not a cron expression; expected five fields like '*/5 * * * *'"
        )
    return TriggerSpec("schedule", function, cron=cron.strip())


def file_spec(function: str, directory: Any, pattern: str = "*") -> TriggerSpec:
    try:
        folder = Path(os.fspath(directory)).expanduser().resolve()
        is_folder = folder.is_dir()
    except (TypeError, ValueError, OSError, RuntimeError) as e:
        # A NUL byte, an unknown ~user, a name too long, a symlink loop.
        raise TriggerError(f"{function}.on_file(): expected a folder path, got {directory!r} ({e})") from None
    if not is_folder:
        raise TriggerError(f"{function}.on_file(): {folder} is not a folder; create it first")
    if not isinstance(pattern, str) or not pattern:
        raise TriggerError(f"{function}.on_file(): pattern must be a glob like '*.png', got {pattern!r}")
    return TriggerSpec("file", function, directory=str(folder), pattern=pattern)


def next_time(spec: TriggerSpec, after: float) -> float:
    """The first tick of a schedule strictly after `after` (unix seconds)."""
    if spec.every is not None:
        # Ticks on a fixed grid from the trigger's creation, so a restart does not shift them.
        periods = int((after - spec.created) // spec.every) + 1
        return spec.created + max(periods, 1) * spec.every
    base = datetime.fromtimestamp(after, timezone.utc)
    return float(croniter(spec.cron, base).get_next(float))


class TriggerStore:
    """Triggers on disk, shared by a server and its kernels: `<id>.json` each, and `<id>.files` for progress."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            private_dir(directory)
        except OSError as e:
            raise TriggerError(f"cannot create the trigger folder {directory}: {e}") from None

    def add(self, spec: TriggerSpec) -> None:
        path = self.directory / f"{spec.id}.json"
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        write_private(temporary, json.dumps(asdict(spec)).encode())
        os.replace(temporary, path)

    def remove(self, function: str, kind: str) -> bool:
        try:
            (self.directory / f"{function}.{kind}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    def clear(self) -> None:
        """Remove every trigger, keeping the record of which files were handled."""
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def specs(self) -> list[TriggerSpec]:
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(TriggerSpec.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as e:
                log.warning("jupyter-faas: skipping the damaged trigger %s: %s", path, e)
        return found

    def progress(self, spec: TriggerSpec) -> FileProgress:
        return FileProgress(self.directory / f"{spec.id}.files")


# How a dropped file ended: its invocation succeeded, or it became a dead letter.
FileStatus = Literal["done", "failed"]


class FileProgress:
    """Which dropped files were handled: one JSON line per file version, appended once its invocation ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handled: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    self.handled[entry["key"]] = entry["status"]

    def mark(self, key: str, status: FileStatus, invocation: str) -> None:
        self.handled[key] = status
        with os.fdopen(open_private(self.path, os.O_WRONLY | os.O_APPEND), "a") as file:
            file.write(json.dumps({"key": key, "status": status, "invocation": invocation, "at": time.time()}) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def counts(self) -> dict[str, int]:
        """Files handled since the trigger was first set, across restarts: succeeded, and dead-lettered."""
        statuses = list(self.handled.values())
        return {"files_done": statuses.count("done"), "files_failed": statuses.count("failed")}


def file_key(path: Path, stat: os.stat_result) -> str:
    """One version of one file: a file replaced or rewritten later is a new drop, as a new object in a bucket."""
    return f"{path.name}:{stat.st_mtime_ns}:{stat.st_size}"


@dataclass
class _Active:
    spec: TriggerSpec
    next_due: float | None = None
    last_fired: float | None = None
    fired: int = 0
    failed: int = 0
    progress: FileProgress | None = None
    running: set[str] = field(default_factory=set)
    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    watcher: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    last_scan: float = 0.0
    changed: bool = True
    links: set[str] = field(default_factory=set)


# What the runner calls to start one invocation: (function name, arguments, trigger kind, on_done) -> started?
Launch = Callable[[str, tuple[Any, ...], str, Callable[[Future[Any]], None]], bool]
# What it calls with an invocation that failed: (trigger spec, its arguments, the error, the invocation id).
Failed = Callable[[TriggerSpec, tuple[Any, ...], BaseException, str], None]


class TriggerRunner:
    """Fires the stored triggers: one thread ticks the schedules and scans folders, watchers wake it for files.

    Schedules never replay ticks missed while the process was down: after a start, the first tick is the
    next one after now. Files are handled once per version: a file is marked done after its invocation
    succeeds, or failed (and dead-lettered) after it fails, and neither is invoked again, across restarts.
    """

    def __init__(self, store: TriggerStore, launch: Launch, failed: Failed, takes_bytes: Callable[[str], bool]) -> None:
        self.store = store
        self._launch = launch
        self._failed = failed
        self._takes_bytes = takes_bytes
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faas-triggers", daemon=True)
        # Set once the first look at the store has armed every trigger in it (schedules due, folders watched).
        self._armed = threading.Event()

    def start(self) -> TriggerRunner:
        self._wake.set()  # the first look at the store at once, not a tick later
        self._thread.start()
        return self

    def wait_armed(self, timeout: float) -> bool:
        """Wait until the triggers stored when the runner started are armed; False at the timeout."""
        return self._armed.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            active = list(self._active.values())
        for state in active:
            state.stop.set()
        self._thread.join(timeout=10)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            active = list(self._active.values())
        listed = []
        for state in active:
            entry = state.spec.to_dict()
            entry.update(next_due=state.next_due, last_fired=state.last_fired, fired=state.fired, failed=state.failed)
            if state.progress is not None:
                entry.update(state.progress.counts(), running=len(state.running))
            listed.append(entry)
        return listed

    def refresh(self) -> None:
        """Look at the store now (new and removed triggers); the runner also does it on every tick."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_TICK)
            self._wake.clear()
            try:
                self._sync()
                now = time.time()
                with self._lock:
                    active = list(self._active.values())
                for state in active:
                    if state.spec.kind == "schedule":
                        self._tick(state, now)
                    elif state.changed or state.seen or time.monotonic() - state.last_scan >= _RESCAN:
                        self._scan(state)
            except Exception:  # a broken trigger must not stop the others; the next tick tries again
                log.exception("jupyter-faas: the trigger runner hit an error")
            # After the first pass: every stored trigger is armed, and the files already there are being looked at.
            self._armed.set()

    def _sync(self) -> None:
        specs = {spec.id: spec for spec in self.store.specs()}
        with self._lock:
            for gone in [key for key, state in self._active.items() if specs.get(key) != state.spec]:
                self._active.pop(gone).stop.set()
            for key, spec in specs.items():
                if key not in self._active:
                    self._active[key] = self._begin(spec)

    def _begin(self, spec: TriggerSpec) -> _Active:
        state = _Active(spec)
        if spec.kind == "schedule":
            state.next_due = next_time(spec, time.time())
        else:
            state.progress = self.store.progress(spec)
            state.watcher = threading.Thread(
                target=self._watch, args=(state,), name=f"faas-watch-{spec.function}", daemon=True
            )
            state.watcher.start()
        return state

    def _tick(self, state: _Active, now: float) -> None:
        if state.next_due is None or now < state.next_due:
            return
        due = state.next_due
        # The next tick after now: ticks missed while busy or down are skipped, never run twice.
        state.next_due = next_time(state.spec, now)
        state.last_fired = now
        args: tuple[Any, ...] = (datetime.fromtimestamp(due, timezone.utc),)

        def done(future: Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                state.failed += 1
                self._failed(state.spec, args, error, getattr(future, "id", ""))

        if self._launch(state.spec.function, args, "schedule", done):
            state.fired += 1

    def _watch(self, state: _Active) -> None:
        """Wake the runner as soon as something changes in the folder."""
        import watchfiles

        if state.spec.directory is None:  # a schedule: no folder to watch
            return
        try:
            for _ in watchfiles.watch(
                state.spec.directory, stop_event=state.stop, debounce=50, step=20, recursive=False,
                yield_on_timeout=False, raise_interrupt=False,
            ):  # fmt: skip
                state.changed = True
                self._wake.set()
        except Exception as e:  # the folder went away: the periodic rescan still sees it come back
            log.warning("jupyter-faas: stopped watching %s: %s", state.spec.directory, e)

    def _scan(self, state: _Active) -> None:
        spec, progress = state.spec, state.progress
        assert progress is not None and spec.directory is not None
        state.last_scan = time.monotonic()
        state.changed = False
        try:
            entries = sorted(Path(spec.directory).iterdir(), key=lambda p: p.name)
        except OSError:
            return
        now = time.monotonic()
        for path in entries:
            if path.name.startswith(".") or not fnmatch.fnmatch(path.name, spec.pattern):
                continue
            try:
                stat = path.lstat()
            except OSError:
                continue
            if stat_mode.S_ISLNK(stat.st_mode):
                # A link could name any file the server can read: links are never followed.
                if path.name not in state.links:
                    state.links.add(path.name)
                    log.warning("jupyter-faas: %s is a symbolic link; file triggers skip links", path)
                continue
            if not stat_mode.S_ISREG(stat.st_mode):
                continue
            key = file_key(path, stat)
            if key in progress.handled or key in state.running:
                continue
            # Taken only once it has kept its size and mtime for _SETTLE: its writer may still be writing.
            first_seen = state.seen.get(path.name)
            signature = (stat.st_mtime_ns, stat.st_size)
            if first_seen is None or first_seen[:2] != signature:
                state.seen[path.name] = (*signature, now)
                continue
            if now - first_seen[2] < _SETTLE:
                continue
            state.seen.pop(path.name, None)
            self._fire_file(state, path, key)

    def _fire_file(self, state: _Active, path: Path, key: str) -> None:
        assert state.progress is not None
        if self._takes_bytes(state.spec.function):
            try:
                argument: Any = read_dropped_file(path, _config.call_max_bytes())
            except InputRefused as e:
                # Never run: a dead letter at once, with the reason; the file itself stays where it is.
                log.warning("jupyter-faas: file trigger of %s: %s", state.spec.function, e)
                state.failed += 1
                invocation = uuid.uuid4().hex
                self._failed(state.spec, (str(path),), e, invocation)
                state.progress.mark(key, "failed", invocation)
                return
            except OSError as e:
                log.warning("jupyter-faas: cannot read %s: %s", path, e)
                return
        else:
            argument = str(path)
        args = (argument,)
        state.running.add(key)

        def done(future: Future[Any]) -> None:
            error = future.exception()
            invocation = getattr(future, "id", "")
            if error is not None:
                # Dead-lettered before it is marked: a file marked failed always has its letter.
                state.failed += 1
                self._failed(state.spec, (str(path),), error, invocation)
            state.progress.mark(key, "failed" if error is not None else "done", invocation)  # type: ignore[union-attr]
            state.running.discard(key)

        if self._launch(state.spec.function, args, "file", done):
            state.fired += 1
        else:
            state.running.discard(key)
