"""The token buckets and day counts behind --rate and --quota: their arithmetic, their bound, their file."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from jupyter_faas.errors import LimitError
from jupyter_faas.gateway.ratelimit import Limited, Limiter, Rate, parse_quota, parse_rate

# Noon UTC of a fixed day, so that no test straddles midnight.
NOON = 1_765_000_800.0 - 1_765_000_800.0 % 86400 + 43200


@pytest.mark.parametrize(
    ("text", "rate"),
    [("50/s", Rate(50, 1.0)), ("100/min", Rate(100, 60.0)), ("1000 / hour", Rate(1000, 3600.0)),
     ("5/sec", Rate(5, 1.0)), ("7/minutes", Rate(7, 60.0)), ("9/day", Rate(9, 86400.0))],
)  # fmt: skip
def test_rates_are_read(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "50", "0/s", "-1/s", "50/fortnight", "1.5/s", "/s", "50/s/s"])
def test_a_bad_rate_names_the_option_and_the_form(text: str) -> None:
    with pytest.raises(LimitError, match=r"--rate: expected calls per unit like 50/s"):
        parse_rate(text, "--rate")


@pytest.mark.parametrize("text", ["10000", "10/hour", "0/day", "lots/day"])
def test_a_bad_quota_names_the_option(text: str) -> None:
    with pytest.raises(LimitError, match=r"quota: expected calls per day like 10000/day"):
        parse_quota(text)
    assert parse_quota("10000/day") == 10000


def test_a_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    limiter = Limiter(None)
    rate = Rate(5, 1.0)
    for _ in range(5):
        limiter.admit("k1", "f", rate, None, now=NOON)
    with pytest.raises(Limited) as refused:
        limiter.admit("k1", "f", rate, None, now=NOON)
    assert refused.value.retry_after == 1
    limiter.admit("k2", "f", rate, None, now=NOON)  # another caller: a bucket of its own
    limiter.admit("k1", "g", rate, None, now=NOON)  # another function: a bucket of its own
    limiter.admit("k1", "f", rate, None, now=NOON + 0.2)  # a fifth of a second: one token back
    with pytest.raises(Limited):
        limiter.admit("k1", "f", rate, None, now=NOON + 0.2)
    slow = Rate(2, 60.0)
    limiter.admit("k1", "slow", slow, None, now=NOON)
    limiter.admit("k1", "slow", slow, None, now=NOON)
    with pytest.raises(Limited) as refused:
        limiter.admit("k1", "slow", slow, None, now=NOON + 1)
    assert refused.value.retry_after == 29  # a token every 30 s, one second of it gone


def test_a_refused_call_takes_nothing_from_the_quota_and_the_quota_resets_at_midnight_utc() -> None:
    limiter = Limiter(None)
    limiter.admit("k", "f", Rate(1, 60.0), 2, now=NOON)
    with pytest.raises(Limited):
        limiter.admit("k", "f", Rate(1, 60.0), 2, now=NOON + 1)  # past the rate: not counted
    limiter.admit("k", "f", Rate(1, 60.0), 2, now=NOON + 61)
    with pytest.raises(Limited) as refused:
        limiter.admit("k", "f", Rate(1, 60.0), 2, now=NOON + 200)
    assert "quota" in str(refused.value) and refused.value.retry_after == 43200 - 200
    limiter.admit("k", "f", None, 2, now=NOON + 43200)  # the next UTC day


def test_day_counts_are_kept_in_a_private_file_and_read_back(tmp_path: Path) -> None:
    folder = tmp_path / "quota"
    first = Limiter(folder)
    for _ in range(3):
        first.admit("k", "f", None, 3, now=time.time())
    (log,) = folder.glob("*.log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    again = Limiter(folder)  # a restart
    with pytest.raises(Limited):
        again.admit("k", "f", None, 3)
    again.admit("other", "f", None, 3)


def test_memory_is_bounded_however_many_callers_there_are() -> None:
    limiter = Limiter(None, max_entries=100)
    for number in range(1000):
        limiter.admit(f"k{number}", "f", Rate(1, 1.0), 5, now=NOON)
    assert limiter.sizes() == (100, 100)
