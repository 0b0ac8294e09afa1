"""Rate limits and daily quotas of HTTP endpoints: a token bucket and a day's count for each caller and function."""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from jupyter_faas.config import append_private, private_dir
from jupyter_faas.errors import LimitError

_PER = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
# Buckets and counts kept in memory at most; callers are the owner, the public and keys (at most MAX_KEYS), so
# this is reached only by many keys times many functions. Past it the least recently used is dropped.
MAX_ENTRIES = 100_000
QUOTA_FOLDER = "quota"


@dataclass(frozen=True)
class Rate:
    """`count` calls per `per` seconds: a bucket of `count` tokens, refilled at count/per a second."""

    count: int
    per: float

    @property
    def per_second(self) -> float:
        return self.count / self.per


@functools.lru_cache(maxsize=256)
def parse_rate(value: str, option: str = "rate") -> Rate:
    """ "50/s", "100/min", "1000/hour", "5000/day" as a Rate; LimitError naming `option` for anything else."""
    found = _SPEC.match(str(value).lower())
    unit = None if found is None else _PER.get(found.group(2)) or _PER.get(found.group(2).rstrip("s"))
    if found is None or unit is None or int(found.group(1)) < 1:
        raise LimitError(f"{option}: expected calls per unit like 50/s, 100/min or 1000/hour, got {value!r}")
    return Rate(int(found.group(1)), unit)


@functools.lru_cache(maxsize=256)
def parse_quota(value: str, option: str = "quota") -> int:
    """ "10000/day" as 10000 calls a day (a UTC day); LimitError naming `option` for anything else."""
    found = _SPEC.match(str(value).lower())
    if found is None or found.group(2) not in ("d", "day") or int(found.group(1)) < 1:
        raise LimitError(f"{option}: expected calls per day like 10000/day, got {value!r}")
    return int(found.group(1))


def check(rate: str | None, quota: str | None, prefix: str = "") -> None:
    """Raise LimitError, naming the option, unless both are None or well formed."""
    if rate is not None:
        parse_rate(rate, f"{prefix}rate")
    if quota is not None:
        parse_quota(quota, f"{prefix}quota")


class Limited(Exception):
    """A call refused by a rate or a quota; never run. `retry_after` is in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _today(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date().isoformat()


def _seconds_to_midnight(now: float) -> int:
    return 86400 - int(now) % 86400


class Limiter:
    """The calls each (caller, function) may make: a token bucket per rate, a count per UTC day per quota.

    Counts of the day are appended to a file in `folder` (a line per admitted call of a function with a quota) and
    read back at start, so that a restart does not hand out a fresh quota; a day's file is removed the next day.
    """

    def __init__(self, folder: Path | None, max_entries: int = MAX_ENTRIES) -> None:
        self.folder = folder
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()  # tokens, when
        self._day = _today(time.time())
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._load()

    def _file(self, day: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{day}.log"

    def _load(self) -> None:
        if self.folder is None:
            return
        private_dir(self.folder)
        for old in self.folder.glob("*.log"):
            if old.stem != self._day:
                with contextlib.suppress(OSError):
                    old.unlink()
        path = self._file(self._day)
        assert path is not None
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                caller, _, function = line.partition(" ")
                if function:
                    self._count((caller, function), 1)

    def _count(self, entry: tuple[str, str], added: int) -> int:
        count = self._counts.pop(entry, 0) + added
        self._counts[entry] = count
        while len(self._counts) > self.max_entries:
            self._counts.popitem(last=False)
        return count

    def admit(self, caller: str, function: str, rate: Rate | None, quota: int | None, now: float | None = None) -> None:
        """Take one call for `caller` on `function`, or raise Limited (and take nothing)."""
        if rate is None and quota is None:
            return
        now = time.time() if now is None else now
        entry = (caller, function)
        with self._lock:
            day = _today(now)
            if day != self._day:
                self._day, self._counts = day, OrderedDict()
                self._drop_old_files(day)
            if quota is not None and self._counts.get(entry, 0) >= quota:
                raise Limited(
                    f"this caller has made its {quota} calls of {function} for today (UTC), its quota",
                    _seconds_to_midnight(now),
                )
            if rate is not None:
                tokens, then = self._buckets.pop(entry, (float(rate.count), now))
                tokens = min(float(rate.count), tokens + (now - then) * rate.per_second)
                if tokens < 1.0:
                    self._buckets[entry] = (tokens, now)
                    wait = math.ceil((1.0 - tokens) / rate.per_second)
                    raise Limited(
                        f"past the rate of {rate.count} calls per {_unit(rate.per)} for this caller of {function}",
                        max(1, wait),
                    )
                self._buckets[entry] = (tokens - 1.0, now)
                while len(self._buckets) > self.max_entries:
                    self._buckets.popitem(last=False)
            if quota is not None:
                self._count(entry, 1)
                path = self._file(day)
                if path is not None:
                    # No fsync: a crash may forget the last calls of the day, never double them.
                    append_private(path, f"{caller} {function}\n")

    def _drop_old_files(self, today: str) -> None:
        if self.folder is None:
            return
        for old in self.folder.glob("*.log"):
            if old.stem != today:
                with contextlib.suppress(OSError):
                    os.unlink(old)

    def sizes(self) -> tuple[int, int]:
        """(buckets, day counts) held in memory."""
        with self._lock:
            return len(self._buckets), len(self._counts)


def _unit(seconds: float) -> str:
    return {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}.get(seconds, f"{seconds:g} s")
