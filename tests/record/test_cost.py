"""The cost model against cases worked out by hand."""

from __future__ import annotations

import dask
import pytest

from jupyter_faas import config as _config
from jupyter_faas.config import Pricing
from jupyter_faas.record.cost import billed_ms, compare, gb_seconds, invocation_cost

LAMBDA = Pricing(gb_second=0.0000166667, request=0.0000002, server_hour=0.085)


def test_the_defaults_are_the_documented_list_prices() -> None:
    assert _config.pricing() == LAMBDA


def test_durations_are_billed_in_whole_milliseconds_rounded_up() -> None:
    assert billed_ms(0.02) == 1
    assert billed_ms(1.0) == 1
    assert billed_ms(1.001) == 2
    assert billed_ms(99.5) == 100


def test_gb_seconds_count_memory_in_gb_of_1024_mb() -> None:
    # 1,024 MB for 1 s is one GB-second; 128 MB for 100 ms is 0.0125
    assert gb_seconds(2**30, 1000) == 1.0
    assert gb_seconds(128 * 2**20, 100) == pytest.approx(0.0125)
    assert gb_seconds(512 * 2**20, 0.3) == pytest.approx(0.5 * 0.001)


def test_one_invocation_costs_its_gb_seconds_and_one_request() -> None:
    # 128 MB for 100 ms: 0.0125 GB-s x 0.0000166667 + 0.0000002 = 0.000000408333...
    assert invocation_cost(128 * 2**20, 100, LAMBDA) == pytest.approx(0.0125 * 0.0000166667 + 0.0000002)
    # a million 1 s calls at 1 GB: 16.6667 + 0.20 USD
    assert 1_000_000 * invocation_cost(2**30, 1000, LAMBDA) == pytest.approx(16.8667, rel=1e-6)


def test_the_always_on_comparison() -> None:
    # one hour, 3,600 calls of 100 ms at 1 GB, a server of 4 slots at 0.085 USD/hour
    result = compare(3600, 3600 * 0.1, 3600 * 0.1, 3600, 4, LAMBDA)
    assert result.serverless_usd == pytest.approx(360 * 0.0000166667 + 3600 * 0.0000002)
    assert result.always_on_usd == pytest.approx(0.085)
    # busy 360 s of 4 x 3,600 slot-seconds: 97.5 % idle
    assert result.idle_fraction == pytest.approx(0.975)
    per_call = result.serverless_usd / 3600
    assert result.break_even_per_hour == pytest.approx(0.085 / per_call)
    assert result.savings_usd == pytest.approx(0.085 - result.serverless_usd)


def test_no_invocations_means_no_break_even_and_all_idle() -> None:
    result = compare(0, 0.0, 0.0, 60, 2, LAMBDA)
    assert result.break_even_per_hour is None
    assert result.idle_fraction == 1.0
    assert result.serverless_usd == 0.0


@pytest.mark.parametrize("value", ["free", -1, True, None])
def test_a_bad_price_names_its_key(value: object) -> None:
    with (
        dask.config.set({"faas.pricing.request": value}),
        pytest.raises(_config.ConfigError, match="faas.pricing.request"),
    ):
        _config.pricing()
