"""The worker side on its own: sandboxes with hard timeouts, memory limits and crash isolation."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import from_cell
from jupyter_faas.worker import plugin as _invoker
from jupyter_faas.worker import wire as _wire
from jupyter_faas.worker.plugin import InvokerServer
from jupyter_faas.worker.pool import Batch, Invoker

LIMITS = Limits(timeout=10.0, memory=256 * 10**6, retries=0, concurrency=None)


@pytest.fixture
def invoker() -> Iterator[Invoker]:
    invoker = Invoker(slots=1)
    try:
        yield invoker
    finally:
        invoker.close()


def run_many(
    invoker: Invoker, body: str, calls: list[tuple], timeout: float = 10.0, memory: int = 256 * 10**6
) -> list[tuple]:
    """Run a batch of calls through the invoker; the answers, in order, as (status, value, started, finished,
    fresh, peak, error)."""
    return [answer[:7] for answer in run_full(invoker, body, calls, timeout, memory)]


def run_full(
    invoker: Invoker,
    body: str,
    calls: list[tuple],
    timeout: float = 10.0,
    memory: int = 256 * 10**6,
    max_output: int = 65536,
    streamed: list[tuple] | None = None,
) -> list[tuple]:
    """The whole answers; output streamed while a call ran goes to `streamed` as (index, segments, dropped),
    the rest of it to the answer's eighth item."""
    namespace = {"time": time, "os": os, "sys": sys, "logging": logging}
    definition = from_cell(body, namespace, LIMITS, name="f", params=["x=None"])
    package = (definition.payload, definition.filename, definition.source, definition.reusable)
    blob = cloudpickle.dumps([(args, {}) for args in calls])
    answers: list[tuple] = []
    batch = Batch("f", definition.version, package, blob, timeout, memory, max_output)
    sink = streamed if streamed is not None else []
    invoker.invoke(
        batch,
        list(range(len(calls))),
        lambda index, answer: answers.append((index, answer)),
        lambda index, segments, dropped: sink.append((index, segments, dropped)),
    )
    assert [index for index, _ in answers] == list(range(len(calls)))
    return [answer for _, answer in answers]


def run(invoker: Invoker, body: str, *args: Any, timeout: float = 10.0, memory: int = 256 * 10**6) -> tuple:
    return run_many(invoker, body, [args], timeout, memory)[0]


def test_a_call_runs_in_a_separate_process(invoker: Invoker) -> None:
    status, value, started, finished, fresh, peak, error = run(invoker, "os.getpid()")
    assert status == "ok" and error is None
    assert cloudpickle.loads(value) != os.getpid()
    assert fresh and started <= finished
    assert peak is not None and peak > 0


def test_the_function_is_loaded_once_per_sandbox(invoker: Invoker) -> None:
    first = run(invoker, "x * 2", 1)
    second = run(invoker, "x * 2", 2)
    assert first[4] is True and second[4] is False
    assert cloudpickle.loads(second[1]) == 4


def test_a_timeout_kills_the_sandbox_and_the_next_call_works(invoker: Invoker) -> None:
    began = time.monotonic()
    status, *_, error = run(invoker, "time.sleep(60)", timeout=1.0)
    assert status == "timeout"
    assert error[0] == "FaasTimeout" and "timeout of 1s" in error[1]
    assert time.monotonic() - began < 30  # far below the 60 s sleep: it was stopped, not waited for
    status, value, *_ = run(invoker, "x + 1", 1)
    assert status == "ok" and cloudpickle.loads(value) == 2


def test_going_over_memory_is_a_memory_error_and_the_next_call_works(invoker: Invoker) -> None:
    status, *_, peak, error = run(invoker, "b = b'x' * (300 * 2**20)\ntime.sleep(5)\nlen(b)", memory=128 * 2**20)
    assert status == "memory"
    assert peak is not None and peak > 128 * 2**20
    assert error is not None and "memory limit of 128MiB" in error[1]
    status, value, *_ = run(invoker, "x", 7)
    assert status == "ok" and cloudpickle.loads(value) == 7


def test_a_short_peak_over_the_limit_is_still_caught(invoker: Invoker) -> None:
    # allocated and freed between two memory samples; the process's peak still shows it
    status, *_ = run(invoker, "b = b'x' * (300 * 2**20)\ndel b\n'done'", memory=128 * 2**20)
    assert status == "memory"


def test_a_sandbox_that_dies_is_an_error_and_is_replaced(invoker: Invoker) -> None:
    status, *_, error = run(invoker, "os._exit(3)")
    assert status == "error"
    assert error[0] == "SandboxExit" and "exited with code 3" in error[1]
    status, value, *_ = run(invoker, "x", "still here")
    assert status == "ok" and cloudpickle.loads(value) == "still here"


def test_an_exception_carries_type_message_and_the_cells_traceback(invoker: Invoker) -> None:
    status, _, _, _, _, _, error = run(invoker, "a = 1\nraise KeyError('nope')")
    assert status == "error"
    type_name, message, traceback_text, exc_bytes = error
    assert type_name == "KeyError" and message == "'nope'"
    assert 'File "<faas-cell f>", line 3, in f' in traceback_text
    assert "raise KeyError('nope')" in traceback_text
    assert "_runner" not in traceback_text
    assert isinstance(cloudpickle.loads(exc_bytes), KeyError)


def test_a_result_that_cannot_be_sent_back_is_an_error(invoker: Invoker) -> None:
    status, *_, error = run(invoker, "import threading\nthreading.Lock()")
    assert status == "error"
    assert error[0] == "TypeError" and "cannot be sent back" in error[1]


def test_a_batch_answers_every_call_in_order_with_its_own_timeout(invoker: Invoker) -> None:
    answers = run_many(invoker, "if x == 2:\n    time.sleep(60)\nx * 10", [(1,), (2,), (3,)], timeout=1.0)
    assert [a[0] for a in answers] == ["ok", "timeout", "ok"]
    assert cloudpickle.loads(answers[0][1]) == 10 and cloudpickle.loads(answers[2][1]) == 30
    # the call after the stuck one ran in a fresh sandbox, so it loaded the function anew
    assert answers[2][4] is True


def test_a_crash_mid_batch_fails_only_that_call(invoker: Invoker) -> None:
    answers = run_many(invoker, "if x == 1:\n    os._exit(9)\nx", [(0,), (1,), (2,)])
    assert [a[0] for a in answers] == ["ok", "error", "ok"]
    assert answers[1][6][0] == "SandboxExit"


def output_of(answer: tuple, streamed: list[tuple], index: int = 0) -> str:
    """Everything a call wrote: what was streamed while it ran, then its answer's tail."""
    parts = [text for i, segments, _ in streamed if i == index for _, text in segments]
    tail = answer[7]
    if tail is not None:
        parts += [text for _, text in tail[0]]
    return "".join(parts)


def test_print_stderr_and_logging_are_captured_for_the_call(invoker: Invoker) -> None:
    body = (
        "print('to stdout', x)\n"
        "sys.stderr.write('to stderr\\n')\n"
        "sys.stdout.buffer.write(b'bytes\\n')\n"
        "logging.getLogger('app').warning('a warning')\n"
        "x"
    )
    streamed: list[tuple] = []
    (answer,) = run_full(invoker, body, [(5,)], streamed=streamed)
    assert answer[0] == "ok"
    segments = [segment for _, segs, _ in streamed for segment in segs] + list(answer[7][0])
    streams = {stream for stream, _ in segments}
    assert streams == {"stdout", "stderr"}
    text = output_of(answer, streamed)
    assert text.startswith("to stdout 5\nto stderr\nbytes\n")
    assert "a warning" in text
    assert answer[7][1] == 0


def test_output_is_cut_at_the_limit_and_counts_what_was_dropped(invoker: Invoker) -> None:
    # 10,000 lines of 10 bytes, then 1 MB in one write of two-byte characters.
    body = "for i in range(10000):\n    print(f'{i:09d}')\nsys.stdout.write('é' * 500000)\n'done'"
    streamed: list[tuple] = []
    (answer,) = run_full(invoker, body, [()], max_output=1001, streamed=streamed)
    assert answer[0] == "ok"
    text = output_of(answer, streamed)
    assert text == "".join(f"{i:09d}\n" for i in range(100)) + "0"
    assert answer[7][1] == 10000 * 10 + 500000 * 2 - 1001


def test_output_is_never_cut_inside_a_character(invoker: Invoker) -> None:
    (answer,) = run_full(invoker, "sys.stdout.write('é' * 10)", [()], max_output=5)
    assert output_of(answer, []) == "éé"
    assert answer[7][1] == 20 - 4


def test_output_streams_while_the_call_runs(invoker: Invoker) -> None:
    # The call waits until its first line has reached the caller: it can only finish if output streams.
    marker = f"/tmp/faas-streamed-{os.getpid()}"
    body = (
        "print('first', flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({marker!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('second')\n"
        f"os.path.exists({marker!r})"
    )
    streamed: list[tuple] = []

    class Watching(list):
        def append(self, item: tuple) -> None:
            super().append(item)
            if any("first" in text for _, text in item[1]):
                open(marker, "w").close()

    streamed = Watching()
    try:
        (answer,) = run_full(invoker, body, [()], streamed=streamed)
    finally:
        if os.path.exists(marker):
            os.unlink(marker)
    assert answer[0] == "ok" and cloudpickle.loads(answer[1]) is True
    assert output_of(answer, streamed) == "first\nsecond\n"


def test_a_timed_out_call_keeps_what_it_streamed(invoker: Invoker) -> None:
    streamed: list[tuple] = []
    body = "print('before the hang', flush=True)\ntime.sleep(60)"
    (answer,) = run_full(invoker, body, [()], timeout=1.5, streamed=streamed)
    assert answer[0] == "timeout"
    assert output_of(answer, streamed) == "before the hang\n"


def test_calls_in_one_batch_keep_their_output_apart(invoker: Invoker) -> None:
    streamed: list[tuple] = []
    answers = run_full(invoker, "print('call', x)\nx", [(1,), (2,), (3,)], streamed=streamed)
    assert [output_of(answer, streamed, i) for i, answer in enumerate(answers)] == [f"call {i}\n" for i in (1, 2, 3)]


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_connections_that_never_send_a_token_are_closed_and_hold_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short handshake deadline, so the test does not wait out the real one.
    monkeypatch.setattr(_invoker, "HANDSHAKE_TIMEOUT", 1.0, raising=False)
    invoker = Invoker(slots=1)
    server = InvokerServer(invoker, "127.0.0.1", time.time())
    token = b"t" * _invoker.TOKEN_LENGTH
    server.tokens.add(token)
    threads_before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(server.endpoint)
            sock.setblocking(False)
            idle.append(sock)
        most_threads = threading.active_count()
        open_ones = list(idle)
        deadline = time.monotonic() + 15
        while open_ones and time.monotonic() < deadline:
            most_threads = max(most_threads, threading.active_count())
            open_ones = [sock for sock in open_ones if not _closed_by_peer(sock)]
            time.sleep(0.05)
        assert not open_ones, f"{len(open_ones)} of 300 idle connections are still open after 15 s"
        grown = most_threads - threads_before
        assert grown <= getattr(_invoker, "MAX_HANDSHAKES", 64) + 5, f"{grown} threads for idle connections"
        # A client that holds the token is served as before.
        with socket.create_connection(server.endpoint, timeout=10) as client:
            _wire.send_token(client, token)
            assert _wire.receive(client)[0] == "hello"
    finally:
        for sock in idle:
            sock.close()
        server.close()
        invoker.close()


def test_a_stop_ends_only_the_running_call_it_names_and_a_stray_one_is_dropped() -> None:
    invoker = Invoker(slots=1)
    server = InvokerServer(invoker, "127.0.0.1", time.time())
    token = b"s" * _invoker.TOKEN_LENGTH
    server.tokens.add(token)
    body = "print('began', x, flush=True)\ntime.sleep(x)\nx"
    definition = from_cell(body, {"time": time}, LIMITS, name="f", params=["x=None"])
    package = (definition.payload, definition.filename, definition.source, definition.reusable)

    def request(*sleeps: float) -> tuple:
        blob = cloudpickle.dumps([((seconds,), {}) for seconds in sleeps])
        indices = list(range(len(sleeps)))
        return ("run", "f", definition.version, package, blob, indices, 30.0, 256 * 10**6, 65536, None, "warm", 2**30)

    def until_running(client: socket.socket, index: int, answered: list[tuple[int, tuple]]) -> list[tuple[int, tuple]]:
        """Frames up to the first output of the call at `index` (so it is running), or to the run's end."""
        while True:
            frame = _wire.receive(client)
            if frame[0] in ("answers", "done"):
                answered.extend(frame[1])
            if (frame[0] == "output" and frame[1] == index) or frame[0] == "done":
                return answered

    try:
        with socket.create_connection(server.endpoint, timeout=60) as client:
            _wire.send_token(client, token)
            assert _wire.receive(client)[0] == "hello"
            # Stops and replies for invocations that have ended come between runs: they are dropped.
            _wire.send(client, ("stop", 0))
            _wire.send(client, ("reply", 7, b""))
            _wire.send(client, request(0.0))
            answered = until_running(client, -1, [])
            assert [(index, answer[0]) for index, answer in answered] == [(0, "ok")]
            # Two calls of 20 s in one batch. A stop for the call not yet running is dropped; a stop for the
            # running one ends it at once, and the next call runs, until it is stopped in turn.
            began = time.monotonic()
            _wire.send(client, request(20.0, 20.0))
            answered = until_running(client, 0, [])
            _wire.send(client, ("stop", 1))
            _wire.send(client, ("stop", 0))
            answered = until_running(client, 1, answered)
            _wire.send(client, ("stop", 1))
            answered = until_running(client, -1, answered)
            assert [(index, answer[0], answer[6][0]) for index, answer in answered] == [
                (0, "error", "StreamClosed"),
                (1, "error", "StreamClosed"),
            ]
            assert time.monotonic() - began < 15
    finally:
        server.close()
        invoker.close()
