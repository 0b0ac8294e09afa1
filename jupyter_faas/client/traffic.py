"""A kernel of a Jupyter server sees its functions' traffic there: the server's records, from the shared durable log."""

from __future__ import annotations

import logging
import threading

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.errors import ConfigError, LogError
from jupyter_faas.record.log import read_logged_after
from jupyter_faas.record.records import InvocationRecord

log = logging.getLogger("jupyter_faas.traffic")

# What only the process that owns the endpoints starts (HTTP requests, schedules, file drops): a kernel's own
# invocations are calls, maps and enqueues, already in its memory. So no record is ever counted twice.
SERVED_TRIGGERS = ("http", "schedule", "file")
# How often the log is read for new rows; the server commits its records at most a second apart.
POLL_INTERVAL = 0.25


class ServerTraffic:
    """Reads the records the server's platform logs for the functions this kernel follows, and adopts them into
    this kernel's platform as they are committed: `fn.stats()`, `fn.invocations`, `fn.logs()` and the card.

    A function is followed with each of its versions this kernel defined or deployed: records of other versions
    of the same name (another notebook's) are not its own.
    """

    def __init__(self) -> None:
        self._versions: dict[str, set[str]] = {}
        # Versions followed since the last poll: their rows up to the cursor are looked at once, by the poller.
        self._pending: set[tuple[str, str]] = set()
        self._after = 0
        self._lock = threading.Lock()
        # Held while reading and adopting: a row is adopted once, by the tail or by a version's look back.
        self._reading = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, definition: FunctionDefinition) -> None:
        """From now on, and back to the log's first row, adopt the server's records of this version.

        Returns at once: the poller thread reads the log (a kernel's cell never waits on the disk for it).
        """
        name, version = definition.name, definition.version
        with self._lock:
            if version in self._versions.get(name, set()) or (name, version) in self._pending:
                return
            self._pending.add((name, version))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="faas-server-traffic", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()
            try:
                self.poll()
            except Exception:  # the next poll tries again; a kernel's figures must never stop it
                log.exception("jupyter-faas: reading the server's invocation records failed")

    def poll(self) -> None:
        """Adopt what the server logged since the last poll, and the history of the versions followed since."""
        with self._reading:
            with self._lock:
                pending, self._pending = self._pending, set()
            for name, version in sorted(pending):
                # Rows up to the cursor were looked at without this version: look at them again for it alone.
                self._adopt(name, {version}, upto=self._after)
                with self._lock:
                    self._versions.setdefault(name, set()).add(version)
            with self._lock:
                followed = {name: set(versions) for name, versions in self._versions.items()}
            while True:
                records, self._after = self._read(list(followed), after=self._after)
                _platform.current(start=False).adopt(
                    [r for r in records if r.version in followed.get(r.function, set())]
                )
                if len(records) < PAGE:
                    return

    def _adopt(self, name: str, versions: set[str], upto: int) -> None:
        after = 0
        while after < upto:
            records, after = self._read([name], after=after, upto=upto)
            _platform.current(start=False).adopt([r for r in records if r.version in versions])
            if len(records) < PAGE:
                return

    @staticmethod
    def _read(functions: list[str], after: int, upto: int | None = None) -> tuple[list[InvocationRecord], int]:
        try:
            return read_logged_after(_config.state_dir(), functions, SERVED_TRIGGERS, after, upto, PAGE)
        except (LogError, ConfigError) as e:
            log.debug("jupyter-faas: cannot read the server's records yet: %s", e)
            return [], after


# Rows read at once: a long history is adopted a page at a time.
PAGE = 10_000

_traffic = ServerTraffic()


def follow(definition: FunctionDefinition) -> None:
    """In a kernel whose Jupyter server owns the endpoints, show this version's traffic there; else nothing."""
    if _deploy.served_elsewhere():
        _traffic.follow(definition)
