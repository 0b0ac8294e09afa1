"""Idempotency-Key's store: one run per entry, kept answers, the 422 and 409 answers, and its bounds on disk."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_faas.gateway.answers import HttpError, Reply
from jupyter_faas.gateway.idempotency import Idempotency, fingerprint


class Counted:
    """A stand-in for invoking a function: counts its runs, names an invocation, answers or raises."""

    def __init__(self, answer: Reply | HttpError, delay: float = 0.0, submits: bool = True) -> None:
        self.answer, self.delay, self.submits, self.runs = answer, delay, submits, 0

    async def __call__(self, submitted: Callable[[str], None]) -> Reply:
        self.runs += 1
        if self.submits:
            submitted(f"inv{self.runs}")
        await asyncio.sleep(self.delay)
        if isinstance(self.answer, HttpError):
            raise self.answer
        return self.answer


def test_one_run_per_entry_concurrent_repeats_wait_and_a_new_store_on_the_folder_answers(tmp_path: Path) -> None:
    store = Idempotency(tmp_path / "idem", ttl=60)
    run = Counted(Reply(200, {"n": 1}), delay=0.2)
    print_ = fingerprint("application/json", b'{"x": 1}', False)

    async def main() -> list[tuple[Reply, str | None]]:
        return await asyncio.gather(*(store.run_once("e", print_, run) for _ in range(5)))

    answers = asyncio.run(main())
    assert run.runs == 1
    assert [reply.body for reply, _ in answers] == [{"n": 1}] * 5
    assert sorted(kept or "first" for _, kept in answers) == ["first"] + ["inv1"] * 4
    (path,) = (tmp_path / "idem").glob("*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process on the same folder (a restart) gets the kept answer, and runs nothing.
    again = Idempotency(tmp_path / "idem", ttl=60)
    reply, kept = asyncio.run(again.run_once("e", print_, run))
    assert (reply.body, kept, run.runs) == ({"n": 1}, "inv1", 1)
    with pytest.raises(HttpError) as other:
        asyncio.run(again.run_once("e", fingerprint("application/json", b'{"x": 2}', False), run))
    assert other.value.status == 422 and other.value.kind == "IdempotencyKeyReused"


def test_bytes_and_errors_are_kept_as_they_were_answered(tmp_path: Path) -> None:
    store = Idempotency(tmp_path, ttl=60)
    assert asyncio.run(store.run_once("b", "p", Counted(Reply(200, b"\x00\xff"))))[0].body == b"\x00\xff"
    assert asyncio.run(store.run_once("b", "p", Counted(Reply(200, b"other"))))[0].body == b"\x00\xff"
    failing = Counted(HttpError(500, "ValueError", "f raised ValueError: no", retry_after=None, traceback="t"))
    for _ in range(2):
        with pytest.raises(HttpError) as raised:
            asyncio.run(store.run_once("err", "p", failing))
        assert (raised.value.status, raised.value.kind, raised.value.extra) == (500, "ValueError", {"traceback": "t"})
    assert failing.runs == 1


@pytest.mark.parametrize(
    ("answer", "submits"),
    [(HttpError(429, "TooManyRequests", "later", retry_after=3), True), (HttpError(503, "NoCapacity", "full"), True),
     (HttpError(422, "ArgumentError", "bad"), False)],
)  # fmt: skip
def test_an_answer_that_never_ran_the_function_is_not_kept(tmp_path: Path, answer: HttpError, submits: bool) -> None:
    store = Idempotency(tmp_path, ttl=60)
    for _ in range(2):
        with pytest.raises(HttpError):
            asyncio.run(store.run_once("e", "p", Counted(answer, submits=submits)))
    assert list(tmp_path.glob("*.json")) == []


def test_a_request_cut_short_leaves_its_mark_and_a_repeat_is_409_never_a_second_run(tmp_path: Path) -> None:
    store = Idempotency(tmp_path, ttl=60)
    run = Counted(Reply(200, 1), delay=30)

    async def cut_short() -> None:
        task = asyncio.ensure_future(store.run_once("e", "p", run))
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("*.json")):
            assert time.monotonic() < deadline, "no mark was written"
            await asyncio.sleep(0.01)
        task.cancel()  # the process goes away here, its answer never written
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cut_short())
    later = Idempotency(tmp_path, ttl=60)
    with pytest.raises(HttpError) as raised:
        asyncio.run(later.run_once("e", "p", run))
    assert raised.value.status == 409 and raised.value.extra["invocation"] == "inv1" and run.runs == 1


def test_answers_past_their_time_to_live_are_gone_and_the_folder_is_bounded(tmp_path: Path) -> None:
    store = Idempotency(tmp_path, ttl=60)
    for number in range(30):
        asyncio.run(store.run_once(f"e{number}", "p", Counted(Reply(200, "x" * 100))))
    old = time.time() - 120
    for path in sorted(tmp_path.glob("*.json"))[:5]:
        os.utime(path, (old, old))
    assert store.sweep() == 5
    assert store.sweep(max_answers=10) == 15
    assert len(list(tmp_path.glob("*.json"))) == 10
    assert store.sweep(max_bytes=0) == 10
    short = Idempotency(tmp_path, ttl=0.05)
    run = Counted(Reply(200, 1))
    asyncio.run(short.run_once("t", "p", run))
    time.sleep(0.1)
    asyncio.run(short.run_once("t", "p", run))
    assert run.runs == 2  # past its time to live, a repeat is a new request


def test_memory_holds_only_the_requests_running_now(tmp_path: Path) -> None:
    store = Idempotency(tmp_path, ttl=60)
    for number in range(200):
        asyncio.run(store.run_once(f"e{number}", "p", Counted(Reply(200, number))))
    assert store._flights == {}
