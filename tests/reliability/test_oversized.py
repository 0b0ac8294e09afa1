"""Oversized calls: arguments and results past faas.call.max-bytes, and a frame cut off as it is sent."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from jupyter_faas import WorkerLost, function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import ArgumentsTooLarge, ResultTooLarge

MiB = 2**20


@function(name="measure", memory="512MB")
def measure(data: bytes) -> int:
    return len(data)


@function(name="produce", memory="512MB")
def produce(size: int) -> bytes:
    return b"r" * size


@function(name="bystander")
def bystander(x: int) -> int:
    return x + 1


def test_arguments_past_the_limit_are_refused_before_anything_is_sent(own_platform: Callable[..., Platform]) -> None:
    own_platform({"faas.cluster.maximum": 1, "faas.call.max-bytes": "1MiB"})
    began = time.monotonic()
    with pytest.raises(ArgumentsTooLarge, match=r"measure\(\): its arguments are 2\.00 MiB .*faas\.call\.max-bytes"):
        measure.submit(b"x" * (2 * MiB))
    with pytest.raises(ArgumentsTooLarge, match=r"item 3"):
        measure.map([b"a", b"b", b"c", b"x" * (2 * MiB)])
    assert time.monotonic() - began < 5
    # Nothing was sent, so nothing ran and nothing was recorded.
    assert measure.invocations == []
    # Each item within the limit, together past it: the map still runs, every result in order.
    items = [bytes([n]) * (200 * 1024) for n in range(20)]
    assert measure.map(items) == [200 * 1024] * 20
    assert bystander(1) == 2


def test_a_result_past_the_limit_is_a_clear_error_and_the_worker_lives(own_platform: Callable[..., Platform]) -> None:
    platform = own_platform({"faas.cluster.maximum": 1, "faas.call.max-bytes": "1MiB"})
    assert len(produce(1000)) == 1000
    first = produce.invocations[-1]
    events = len(platform.scale_events)
    with pytest.raises(ResultTooLarge, match=r"is 3,145,\d+ bytes serialized; the limit is faas\.call\.max-bytes"):
        produce(3 * MiB)
    assert len(produce(2000)) == 2000
    last = produce.invocations[-1]
    # The same worker, never restarted: dropping the result cost the call, not the worker.
    assert last.worker == first.worker and not last.cold_start
    assert len(platform.scale_events) == events
    assert [r.status for r in produce.invocations[-3:]] == ["ok", "error", "ok"]


@pytest.mark.timeout(240)
def test_a_frame_cut_off_as_it_is_sent_is_an_attempt_not_a_resend(own_platform: Callable[..., Platform]) -> None:
    """The worker's nanny kills it while a frame bigger than its memory arrives: the send fails part-way.

    Before, such a job went back to the queue as "never sent", so a worker was killed again and again and the
    call never ended. With retries=0 it must now end, once, with WorkerLost.
    """
    platform = own_platform(
        {"faas.cluster.maximum": 1, "faas.call.max-bytes": "1GiB", "faas.cluster.worker-memory": "300MiB"}
    )

    @function(name="swallow", memory="2GB", retries=0, timeout="60s")
    def swallow(data: bytes) -> int:
        return len(data)

    assert bystander(1) == 2
    began = time.monotonic()
    future = swallow.submit(b"x" * (600 * MiB))
    with pytest.raises(WorkerLost):
        future.result(timeout=120)
    took = time.monotonic() - began
    records = swallow.invocations
    assert [(r.status, r.error, r.attempts) for r in records] == [("error", "WorkerLost", 1)]
    # Everyone else is served again once the nanny has put the worker back.
    assert bystander(2) == 3
    restarts = sum(1 for _, count in platform.scale_events if count == 0)
    print(f"\ncut-off frame: WorkerLost after {took:.1f} s; {len(platform.scale_events)} scale events, {restarts} at 0")
