"""The keep-alive and scale-to-zero policy, with plain numbers and no cluster."""

from __future__ import annotations

from jupyter_faas.dispatch.keepalive import (
    Activity,
    idle_expired,
    may_retire,
    seconds_to_zero,
    wanted_now,
    workers_wanted,
)


def activity(
    in_flight: int = 0,
    held: bool = False,
    retiring: bool = False,
    remote_busy: bool = False,
    remote_wanted: int = 0,
    idle_for: float = 0.0,
) -> Activity:
    return Activity(in_flight, held, retiring, remote_busy, remote_wanted, last_activity=100.0, now=100.0 + idle_for)


def test_idle_expired_at_the_timeout_and_never_without_one() -> None:
    assert not idle_expired(100.0, 159.9, 60.0)
    assert idle_expired(100.0, 160.0, 60.0)
    assert not idle_expired(100.0, 10_000.0, None)


def test_workers_wanted_is_one_per_invocation_at_least_the_zone_floor_at_most_the_maximum() -> None:
    assert workers_wanted(in_flight=3, remote_wanted=2, zone_floor=1, maximum=10) == 5
    assert workers_wanted(in_flight=0, remote_wanted=0, zone_floor=3, maximum=10) == 3
    assert workers_wanted(in_flight=50, remote_wanted=0, zone_floor=1, maximum=8) == 8


def test_wanted_now_keeps_the_most_requested_until_the_keep_alive_ends() -> None:
    assert wanted_now(activity(in_flight=2), requested=6, zone_floor=1, maximum=8, idle_timeout=60.0) == 6
    assert wanted_now(activity(idle_for=30.0), requested=6, zone_floor=1, maximum=8, idle_timeout=60.0) == 6
    assert wanted_now(activity(idle_for=60.0), requested=6, zone_floor=1, maximum=8, idle_timeout=60.0) == 0


def test_wanted_now_stays_up_while_anything_runs_or_waits() -> None:
    for busy in (
        activity(in_flight=1, idle_for=99),
        activity(held=True, idle_for=99),
        activity(remote_busy=True, remote_wanted=3, idle_for=99),
    ):
        assert wanted_now(busy, requested=0, zone_floor=1, maximum=8, idle_timeout=60.0) >= 1
    assert wanted_now(activity(remote_busy=True, remote_wanted=3, idle_for=99), 0, 1, 8, 60.0) == 3
    # A misconfigured idle timeout never scales to zero.
    assert wanted_now(activity(idle_for=1e9), requested=2, zone_floor=1, maximum=8, idle_timeout=None) == 2


def test_may_retire_only_when_idle_past_the_keep_alive() -> None:
    assert may_retire(activity(idle_for=60.0), 60.0)
    assert not may_retire(activity(idle_for=59.0), 60.0)
    assert not may_retire(activity(idle_for=60.0), None)
    for busy in (
        activity(in_flight=1, idle_for=99),
        activity(held=True, idle_for=99),
        activity(retiring=True, idle_for=99),
    ):
        assert not may_retire(busy, 60.0)
    assert not may_retire(activity(remote_busy=True, idle_for=99), 60.0)


def test_seconds_to_zero_counts_down_only_while_idle() -> None:
    assert seconds_to_zero(activity(idle_for=20.0), 60.0) == 40.0
    assert seconds_to_zero(activity(idle_for=90.0), 60.0) == 0.0
    assert seconds_to_zero(activity(in_flight=1, idle_for=20.0), 60.0) is None
    assert seconds_to_zero(activity(retiring=True), 60.0) is None
    assert seconds_to_zero(activity(remote_busy=True), 60.0) is None
