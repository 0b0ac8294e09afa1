"""Parsing of timeouts, sizes and counts, and resolving a function's limits against the config."""

from __future__ import annotations

import dask
import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.errors import LimitError
from jupyter_faas.units import format_size, parse_count, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("2 minutes", 120.0), (5, 5.0), ("1.5", 1.5), ("1h", 3600.0)],
)
def test_durations_take_the_forms_dask_users_know(value: object, seconds: float) -> None:
    assert parse_duration(value, "--timeout") == seconds


@pytest.mark.parametrize("value", ["abc", "", "-1s", "0s", None, True, [], "10 parsecs", float("nan")])
def test_a_bad_duration_names_the_option_and_the_form(value: object) -> None:
    with pytest.raises(LimitError, match=r"^--timeout: expected a duration like 30s, 500ms or '2 minutes'"):
        parse_duration(value, "--timeout")


def test_a_duration_below_the_minimum_says_so() -> None:
    with pytest.raises(LimitError, match="at least 1s"):
        parse_duration("200ms", "faas.cluster.idle-timeout", minimum=1)


@pytest.mark.parametrize(
    ("value", "size"), [("512MB", 512 * 10**6), ("1GiB", 2**30), ("256 MiB", 256 * 2**20), (1000, 1000)]
)
def test_sizes_take_the_forms_dask_users_know(value: object, size: int) -> None:
    assert parse_size(value, "--memory") == size


@pytest.mark.parametrize("value", ["lots", "", "12 parsecs", None, False])
def test_a_bad_size_names_the_option_and_the_form(value: object) -> None:
    with pytest.raises(LimitError, match=r"^--memory: expected a size like 256MB or 1GiB"):
        parse_size(value, "--memory")


def test_a_size_below_the_minimum_says_so() -> None:
    with pytest.raises(LimitError, match="at least 64MiB"):
        parse_size("1MB", "--memory", minimum=64 * 2**20)


def test_counts() -> None:
    assert parse_count("3", "--retries", minimum=0) == 3
    assert parse_count(None, "--concurrency", minimum=1, allow_none=True) is None
    assert parse_count("unlimited", "--concurrency", minimum=1, allow_none=True) is None
    with pytest.raises(LimitError, match="--retries: expected a whole number, got 'x'"):
        parse_count("x", "--retries", minimum=0)
    with pytest.raises(LimitError, match="at least 1"):
        parse_count(0, "--concurrency", minimum=1, allow_none=True)
    with pytest.raises(LimitError, match="whole number"):
        parse_count(1.5, "--retries", minimum=0)


def test_sizes_print_in_the_unit_they_were_likely_written_in() -> None:
    assert format_size(256 * 10**6) == "256MB"
    assert format_size(2**30) == "1GiB"
    assert format_size(128 * 2**20) == "128MiB"


def test_limits_fall_back_to_the_config_defaults() -> None:
    limits = Limits.resolve()
    assert limits == Limits(timeout=60.0, memory=256 * 10**6, retries=0, concurrency=None)
    with dask.config.set({"faas.defaults.timeout": "5s", "faas.defaults.concurrency": 4}):
        assert Limits.resolve(retries=2) == Limits(timeout=5.0, memory=256 * 10**6, retries=2, concurrency=4)


def test_a_bad_default_in_the_config_names_its_key() -> None:
    with dask.config.set({"faas.defaults.memory": "plenty"}), pytest.raises(LimitError, match="faas.defaults.memory"):
        Limits.resolve()
