"""Durations, sizes, counts and content types: parsing and formatting, pure (a worker imports it too)."""

from __future__ import annotations

import math
from typing import Any

from dask.utils import format_bytes, parse_bytes, parse_timedelta

from jupyter_faas.errors import LimitError

DURATION_FORM = "a duration like 30s, 500ms or '2 minutes'"
SIZE_FORM = "a size like 256MB or 1GiB"
# Smallest memory limit: below this the sandbox interpreter itself does not fit.
MIN_MEMORY = 64 * 2**20


def parse_duration(value: Any, option: str, *, minimum: float = 0.0) -> float:
    """Seconds from "30s", "500ms", "2 minutes" or a plain number of seconds."""
    try:
        if isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
            raise TypeError
        seconds = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
        raise LimitError(f"{option}: expected {DURATION_FORM}, got {value!r}") from None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0 or seconds < minimum:
        floor = f"at least {minimum:g}s" if minimum else "greater than zero"
        raise LimitError(f"{option}: expected {DURATION_FORM}, {floor}; got {value!r}")
    return float(seconds)


def parse_size(value: Any, option: str, *, minimum: int = 1) -> int:
    """Bytes from "256MB", "1GiB" or a plain number of bytes."""
    try:
        if isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
            raise TypeError
        size = int(value) if isinstance(value, int | float) else parse_bytes(value)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
        raise LimitError(f"{option}: expected {SIZE_FORM}, got {value!r}") from None
    if size < minimum:
        raise LimitError(f"{option}: expected {SIZE_FORM}, at least {format_size(minimum)}; got {value!r}")
    return size


def parse_count(value: Any, option: str, *, minimum: int, allow_none: bool = False) -> int | None:
    """A whole number of at least `minimum`; None (or "none", "unlimited") where allowed."""
    if allow_none and (value is None or (isinstance(value, str) and value.lower() in ("none", "unlimited"))):
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        extra = " or 'unlimited'" if allow_none else ""
        raise LimitError(f"{option}: expected a whole number{extra}, got {value!r}") from None
    if number < minimum:
        raise LimitError(f"{option}: expected a whole number of at least {minimum}, got {value!r}")
    return number


def format_size(size: int) -> str:
    """256MB stays 256MB and 1GiB stays 1GiB: the unit the value was most likely written in."""
    for unit, factor in (("GiB", 2**30), ("GB", 10**9), ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return format_bytes(size)


# How each call's process is made: "warm" reuses the sandbox (state restored after each call), "fresh" forks
# a throw-away process from the warm sandbox for each call.
ISOLATIONS = ("warm", "fresh")


def parse_isolation(value: Any, option: str) -> str:
    if isinstance(value, str) and value.strip().lower() in ISOLATIONS:
        return value.strip().lower()
    raise LimitError(f"{option}: expected one of {', '.join(ISOLATIONS)}, got {value!r}")
