"""Generator functions on the real embedded cluster: items as they are yielded, backpressure, timeouts, errors."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasTimeout, function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import UsageError
from jupyter_faas.record.records import InvocationRecord
from tests.helpers import wait_for


@function(timeout="30s")
def until_released(gate: str) -> Iterator[str]:
    import os
    import time

    yield "first"
    # Ends only once the caller has seen the first item and opened the gate: proof that it came early.
    deadline = time.monotonic() + 20
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield "released" if os.path.exists(gate) else "never released"


@function(timeout="30s")
async def counted(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0.01)
        yield i


@function(timeout="60s")
def flood(count: int, progress: str) -> Iterator[bytes]:
    for i in range(count):
        with open(progress, "w") as f:
            f.write(str(i))
        yield b"x" * 65536


@function(timeout="1.5s")
def endless() -> Iterator[int]:
    import itertools
    import time

    for i in itertools.count():
        time.sleep(0.05)
        yield i


@function(timeout="2s")
def never_read(progress: str) -> Iterator[bytes]:
    for i in range(100_000):
        with open(progress, "w") as f:
            f.write(str(i))
        yield b"y" * 65536


@function(timeout="60s", retries=2)
def forever(progress: str) -> Iterator[int]:
    import itertools
    import os
    import time

    for i in itertools.count():
        with open(progress + ".part", "w") as f:
            f.write(str(i))
        os.replace(progress + ".part", progress)  # whole numbers only, for the reader
        time.sleep(0.002)
        yield i


@function(retries=2)
def breaks_after_one() -> Iterator[int]:
    yield 1
    raise ValueError("broke after one item")


def test_the_first_item_arrives_before_the_generator_ends(platform: Platform, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    items = until_released(str(gate))
    assert next(items) == "first"
    # Still running: it has no record yet.
    assert not [record for record in until_released.invocations if record.id == items.id]
    gate.touch()
    assert list(items) == ["released"]
    record = wait_for(lambda: [r for r in until_released.invocations if r.id == items.id], 10, "the record")[0]
    assert record.status == "ok" and record.items == 2
    assert record.first_item_ms is not None and record.first_item_ms < record.duration_ms


def test_aio_of_a_generator_is_an_async_iterator(platform: Platform) -> None:
    async def collect() -> list[int]:
        return [item async for item in counted.aio(5)]

    assert asyncio.run(collect()) == [0, 1, 2, 3, 4]
    assert list(counted(3)) == [0, 1, 2]


def test_a_caller_that_falls_behind_pauses_the_sandbox(platform: Platform, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    count = 1200  # 75 MiB in all: far more than the buffers between the sandbox and here hold
    items = flood(count, str(progress))
    assert len(next(items)) == 65536
    reached: list[int] = []

    def settled() -> bool:
        # The sandbox is paused once its progress stops moving while nobody reads.
        reached.append(int(progress.read_text() or 0) if progress.exists() else 0)
        return len(reached) > 20 and reached[-1] == reached[-20] > 0

    wait_for(settled, 30, "the generator to pause")
    # Paused far from its end: the buffers hold a bounded part of the stream.
    assert reached[-1] < count // 2
    rest = sum(1 for _ in items)
    assert rest == count - 1
    assert flood.invocations[-1].items == count


def test_the_timeout_covers_the_whole_stream(platform: Platform) -> None:
    began = time.monotonic()
    seen = []
    with pytest.raises(FaasTimeout):
        for item in endless():
            seen.append(item)
    assert len(seen) >= 3 and time.monotonic() - began < 10
    assert endless.invocations[-1].status == "timeout" and endless.invocations[-1].items == len(seen)


def test_the_timeout_counts_the_time_a_stalled_caller_keeps_the_function_paused(
    platform: Platform, tmp_path: Path
) -> None:
    items = never_read(str(tmp_path / "progress"))
    assert len(next(items)) == 65536
    began = time.monotonic()
    # Nobody reads: the function is paused, and still stopped at its timeout.
    record = wait_for(lambda: [r for r in never_read.invocations if r.id == items.id], 20, "the record")[0]
    assert record.status == "timeout" and time.monotonic() - began < 15
    with pytest.raises(FaasTimeout):
        for _ in items:
            pass


def test_an_error_after_an_item_ends_the_iteration_and_is_not_retried(platform: Platform) -> None:
    items = breaks_after_one()
    assert next(items) == 1
    with pytest.raises(ValueError, match="broke after one item"):
        next(items)
    record = breaks_after_one.invocations[-1]
    # Retrying would send the first item again: a stream that has begun is never retried.
    assert record.status == "error" and record.attempts == 1 and record.items == 1


def test_map_and_submit_of_a_generator_say_to_iterate_it(platform: Platform) -> None:
    with pytest.raises(UsageError, match="call it per item"):
        counted.map([1, 2])
    with pytest.raises(UsageError, match="for item in counted"):
        counted.submit(1)


def test_a_cell_body_that_yields_is_a_generator(shell: InteractiveShell, platform: Platform) -> None:
    shell.run_cell_magic("faas", "countdown n:int", "for i in range(n, 0, -1):\n    yield i")
    assert list(shell.user_ns["countdown"](3)) == [3, 2, 1]


def _reached(progress: Path) -> int:
    return int(progress.read_text()) if progress.exists() else -1


def _stopped_record(invocation_id: str | None) -> InvocationRecord:
    found = wait_for(lambda: [r for r in forever.invocations if r.id == invocation_id], 20, "the stopped call's record")
    return found[0]


def _stays_stopped(progress: Path) -> None:
    # Proving that something does not happen needs an observation window: 100 of its items' time.
    reached = _reached(progress)
    time.sleep(0.5)
    assert _reached(progress) == reached


def test_closing_a_stream_stops_the_function_long_before_its_timeout(platform: Platform, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    items = forever(str(progress))
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    began = time.monotonic()
    items.close()
    record = _stopped_record(items.id)
    assert record.status == "error" and record.error == "StreamClosed", record
    assert record.attempts == 1 and record.items >= 3  # stopped, never retried (it has retries=2)
    assert time.monotonic() - began < 15  # its timeout is 60 s
    _stays_stopped(progress)
    assert list(items) == []  # a closed stream ends, as a closed generator does
    assert list(counted(2)) == [0, 1]  # and the platform goes on


def test_leaving_a_for_loop_with_break_stops_the_function(platform: Platform, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    before = {record.id for record in forever.invocations}
    for item in forever(str(progress)):
        if item == 2:
            break
    new = wait_for(lambda: [r for r in forever.invocations if r.id not in before], 20, "the stopped call's record")
    assert new[0].status == "error" and new[0].error == "StreamClosed" and new[0].attempts == 1, new[0]
    _stays_stopped(progress)


def test_a_stream_dropped_before_any_item_stops_the_function(platform: Platform, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    items = forever(str(progress))
    invocation_id = items.id
    wait_for(lambda: _reached(progress) >= 0, 20, "the function to start")
    del items
    gc.collect()  # the stream and its future hold each other: the collector frees them
    record = _stopped_record(invocation_id)
    assert record.status == "error" and record.error == "StreamClosed" and record.attempts == 1, record
    _stays_stopped(progress)


def test_a_stream_that_ends_is_not_stopped_when_it_is_closed(platform: Platform) -> None:
    items = counted(3)
    assert list(items) == [0, 1, 2]
    items.close()
    gc.collect()
    record = wait_for(lambda: [r for r in counted.invocations if r.id == items.id], 10, "the record")[0]
    assert record.status == "ok" and record.items == 3
