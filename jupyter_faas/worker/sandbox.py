"""The sandbox process that runs invocations, one at a time, for a worker that can kill and replace it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from jupyter_faas.errors import FaasTimeout, ResultTooLarge
from jupyter_faas.worker import capture as _capture
from jupyter_faas.worker import children as _children
from jupyter_faas.worker import concurrent as _concurrent
from jupyter_faas.worker import process as _process
from jupyter_faas.worker import runtimes as _runtimes
from jupyter_faas.worker import warm as _warm
from jupyter_faas.worker.code import with_filename
from jupyter_faas.worker.messages import (
    AnswerStatus,
    ErrorInfo,
    IndexedAnswer,
    InitDone,
    Item,
    Missing,
    Output,
    Ready,
    Result,
    RunExtras,
    SandboxRun,
    SetupStarted,
    TrailingOutput,
)

# Functions kept loaded per sandbox; the oldest are dropped first.
_CACHE_SIZE = 64
# A running invocation's new output is sent this often, so a caller sees it while the call runs.
_OUTPUT_INTERVAL = 0.1


class _Loaded:
    __slots__ = ("code", "function", "is_async", "payload", "reusable", "warm")

    def __init__(self, payload: bytes, filename: str, reusable: bool) -> None:
        self.payload = payload
        self.reusable = reusable
        loaded = cloudpickle.loads(payload)
        self.is_async = _warm.is_async(loaded)
        # A class: one instance per sandbox and version, set up before its first call.
        if isinstance(loaded, type):
            # cloudpickle names every method's file <dynamic-code>: they get the class's file back, for tracebacks.
            for value in vars(loaded).values():
                method = getattr(value, "__func__", value)
                if isinstance(method, types.FunctionType):
                    method.__code__ = with_filename(method.__code__, filename)
        self.warm = _warm.WarmInstance(loaded, reusable) if isinstance(loaded, type) else None
        self.code: types.CodeType | None = None
        self.function: types.FunctionType | None = None
        if self.warm is not None:
            return
        function: types.FunctionType = loaded
        self.code = code = with_filename(function.__code__, filename)
        function.__code__ = code
        self.function = function if reusable else None

    def fresh(self) -> Any:
        """A function whose globals no earlier call can have touched (a warm class: its instance, so rebound)."""
        if self.warm is not None:
            return self.warm.bound()
        if self.function is None:
            function: types.FunctionType = cloudpickle.loads(self.payload)
            if self.code is not None:
                function.__code__ = self.code
            return function
        f = self.function
        # Nothing reachable is mutable, so a new globals dict is enough to undo `global x; x = ...`.
        copy = types.FunctionType(f.__code__, dict(f.__globals__), f.__name__, f.__defaults__, f.__closure__)
        copy.__kwdefaults__ = f.__kwdefaults__
        return copy

    def ready(self, channel: _Channel | None, index: int) -> float | None:
        """A warm class's setup() if this sandbox has not run it: the milliseconds it took, or None.

        The worker is told when it starts and ends, so setup has its own time limit.
        """
        if self.warm is None:
            return None

        def on_setup(starting: bool, elapsed_ms: float) -> None:
            if channel is not None:
                message: SetupStarted | InitDone = ("setup", index) if starting else ("init", index, elapsed_ms)
                _send_event(channel, message)

        return self.warm.ready(on_setup, _describe_error)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.teardown()


def _send_event(channel: _Channel, message: SetupStarted | InitDone | Item | IndexedAnswer) -> None:
    with channel.lock:
        channel.conn.send_bytes(pickle.dumps(message, protocol=5))


def _item_sender(channel: _Channel | None, index: int) -> _warm.SendItem | None:
    if channel is None:
        return None

    def send(data: bytes, when: float) -> None:
        item: Item = ("item", index, data, when)
        _send_event(channel, item)

    return send


def _register_source(filename: str, source: str) -> None:
    """Known lines for tracebacks; functions from one file each bring their own lines, so merge them."""
    import linecache

    if not source or os.path.exists(filename):
        return  # a real file on this machine is read as it is
    lines = source.splitlines(keepends=True)
    known = linecache.cache.get(filename)
    if known is not None and len(known) == 4 and known[1] is None:
        previous = known[2]
        width = max(len(previous), len(lines))
        lines = [
            (lines[i] if i < len(lines) and lines[i].strip() else (previous[i] if i < len(previous) else "\n"))
            for i in range(width)
        ]
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def _describe_error(exc: BaseException, skip_frames: int, secrets: dict[str, str] | None = None) -> ErrorInfo:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    # The event loop's and this package's own frames (an awaited or yielding call's) are not the user's.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_NOT_USER_CODE):
        tb = tb.tb_next
    text = "".join(traceback.TracebackException(type(exc), exc, tb).format())
    message = str(exc)
    if secrets:
        redacted_text, redacted_message = _capture.redact(text, secrets), _capture.redact(message, secrets)
        if (redacted_text, redacted_message) != (text, message):
            # The exception itself holds the secret: only its redacted description goes back.
            return type(exc).__qualname__, redacted_message, redacted_text, None
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc, protocol=5)
    except Exception:
        exc_bytes = None
    return type(exc).__qualname__, message, text, exc_bytes


_NOT_USER_CODE = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(asyncio.__file__) + os.sep)


def _watch_parent() -> None:
    """Exit when the worker that owns this sandbox is gone, even mid-call."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            _process.stop_strays()
            os._exit(0)


class _Channel:
    """The socket to the worker, shared by the call loop and the output streamer, one message at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        # (index, capture) of the invocation running now, whose output the streamer sends.
        self.running: tuple[int, _capture.Captured] | None = None

    def send(self, message: Ready | Missing) -> None:
        with self.lock:
            self.conn.send_bytes(pickle.dumps(message, protocol=5))

    def answer(self, result: Result) -> None:
        """The invocation's Answer: its result and its output not yet streamed; nothing of it is streamed after."""
        with self.lock:
            running, self.running = self.running, None
            output: TrailingOutput | None = None
            if running is not None:
                _capture.current.captured = None
                captured = running[1]
                output = (captured.close(), captured.dropped)
            self.conn.send_bytes(pickle.dumps((*result, output), protocol=5))

    def stream(self) -> None:
        while True:
            time.sleep(_OUTPUT_INTERVAL)
            with self.lock:
                if self.running is None:
                    continue
                index, captured = self.running
                segments = captured.take()
                if segments:
                    try:
                        message: Output = ("output", index, segments, captured.dropped)
                        self.conn.send_bytes(pickle.dumps(message, protocol=5))
                    except OSError:
                        return


_SANDBOX_PID = os.getpid()


class _Zygote:
    """Set while this sandbox forks the process of a fresh call, which does speak for its call."""

    forking = False


def _after_fork_in_child() -> None:
    # A forked copy of the sandbox must never speak on the worker's socket, nor capture for the call.
    if _Zygote.forking:
        calls = _children.active()
        if calls is not None:
            calls.after_fork()
        return
    _children.forget()
    _capture.current.captured = None
    if _channel_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_channel_fd)


_channel_fd: int | None = None


def _run_function(
    function: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    send_item: _warm.SendItem | None = None,
    max_item: int = 2**62,
) -> object:
    try:
        # An async function's coroutine runs on the sandbox's loop; a generator's items go out as it yields them.
        return _warm.settle(function(*args, **kwargs), send_item, max_item)
    finally:
        if os.getpid() != _SANDBOX_PID:
            # A forked child returning from the function: it ends here, it does not answer.
            os._exit(0)


def _call(
    loaded: _Loaded,
    call: tuple[tuple[Any, ...], dict[str, Any]],
    limits: tuple[int, int],
    fresh: bool,
    meter: _process.PeakMeter,
    state: _process.ProcessState,
    secrets: dict[str, str] | None = None,
    channel: _Channel | None = None,
    index: int = 0,
) -> Result:
    """One invocation, run here: its Result, to which the answer adds the output not yet streamed.

    Its secrets are in the environment only while it runs; afterwards the process is as it was before it.
    `limits` are the memory limit and the largest result, serialized, that may be sent back.
    """
    memory_limit, max_result = limits
    started = time.time()
    status: AnswerStatus = "ok"
    value, error = b"", None
    if secrets:
        os.environ.update(secrets)
    try:
        args, kwargs = call
        if loaded.ready(channel, index) is not None:
            fresh = True  # its setup ran now: a cold start
        started = time.time()
        result = _run_function(loaded.fresh(), args, kwargs, _item_sender(channel, index), max_result)
    except _warm.SetupFailed as e:
        error = e.error
        if secrets:
            error = (error[0], _capture.redact(error[1], secrets), _capture.redact(error[2], secrets), None)
        status, error = "error", error
    except FaasTimeout as e:
        # A runtime (worker/runtimes/) stopped its call before the worker's deadline: this sandbox lives on.
        status, error = "timeout", _describe_error(e, 2, secrets)
    except MemoryError as e:
        status, error = "memory", _describe_error(e, 2, secrets)
    except BaseException as e:
        status, error = "error", _describe_error(e, 2, secrets)
    else:
        try:
            value = cloudpickle.dumps(result, protocol=5)
        except Exception as e:
            message = f"the result ({type(result).__name__}) cannot be sent back: {e}"
            message = _capture.redact(message, secrets) if secrets else message
            status, error = "error", ("TypeError", message, f"TypeError: {message}\n", None)
        else:
            if len(value) > max_result:
                # Dropped here: a frame that size would go through the worker's memory, and could cost the
                # worker itself, not just this call.
                too_large = ResultTooLarge(
                    f"the result ({type(result).__name__}) is {len(value):,} bytes serialized; the limit is "
                    f"faas.call.max-bytes = {max_result:,} bytes. Write a large result to a file or a store, "
                    "and return its path"
                )
                value = b""
                status, error = "error", _describe_error(too_large, 0, secrets)
    finally:
        _report_instantiation(channel, index)
        _process.stop_strays()
        state.restore()
    finished = time.time()
    peak = meter.after_call()
    if peak is not None and peak > memory_limit and status != "memory":
        status, value, error = "memory", b"", None
    return (status, value, started, finished, fresh, peak, error)


def _report_instantiation(channel: _Channel | None, index: int) -> None:
    """A runtime that made a new instance for the call (WebAssembly) says how long it took, as a warm class's
    setup does: an "init" event, which sets the record's init_ms. It is part of the call's duration."""
    init_ms = _runtimes.take_init_ms()
    if init_ms is not None and channel is not None:
        event: InitDone = ("init", index, init_ms)
        _send_event(channel, event)


def _call_in_fork(
    channel: _Channel,
    loaded: _Loaded,
    call: tuple[tuple[Any, ...], dict[str, Any]],
    index: int,
    limits: tuple[int, int, int],
    fresh: bool,
    state: _process.ProcessState,
    secrets: dict[str, str] | None,
) -> None:
    """One invocation in a process forked for it from this warm one, which it cannot change: it ends after.

    The child answers on the worker's socket itself; the sandbox only waits for it, and answers for it if
    it died without answering. The caller pauses the reader of child-call answers meanwhile.
    """
    global _SANDBOX_PID
    memory_limit, max_output, max_result = limits
    started = time.time()
    answered_read, answered_write = os.pipe()
    # Under the lock, so the child's copy of the socket holds no frame half-sent by the output streamer.
    with channel.lock:
        _Zygote.forking = True
        try:
            pid = os.fork()
        finally:
            _Zygote.forking = False
    if pid == 0:
        code = 1
        try:
            os.close(answered_read)
            _SANDBOX_PID = os.getpid()
            _process.become_subreaper()
            captured = _capture.Captured(max_output, secrets)
            channel.running = (index, captured)
            _capture.current.captured = captured
            threading.Thread(target=channel.stream, name="faas-output", daemon=True).start()
            call_limits = (memory_limit, max_result)
            meter = _process.PeakMeter()
            channel.answer(_call(loaded, call, call_limits, fresh, meter, state, secrets, channel, index))
            os.write(answered_write, b"1")
            code = 0
        finally:
            os._exit(code)
    os.close(answered_write)
    _, status = os.waitpid(pid, 0)
    answered = os.read(answered_read, 1) == b"1"
    os.close(answered_read)
    if not answered:
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        message = f"the process forked for the call {how} before it answered"
        channel.answer(("error", b"", started, time.time(), fresh, None, ("SandboxExit", message, "", None)))


def _replace_version(cache: OrderedDict[str, _Loaded], versions: dict[str, str], name: str, version: str) -> None:
    """A new version of a function replaces the old one here: the old one's warm instance gets its teardown()."""
    if not name:
        return
    previous = versions.get(name)
    versions[name] = version
    if previous is not None and previous != version and previous in cache:
        cache[previous].close()


def _setup_before_fork(
    channel: _Channel, loaded: _Loaded, index: int, max_output: int, secrets: dict[str, str] | None
) -> bool | None:
    """A warm class's setup in the sandbox itself, its output the call's: whether it ran, None if it failed
    (the call is then answered with setup's error)."""
    if loaded.warm is None or loaded.warm.instance is not None:
        return False
    captured = _capture.Captured(max_output, secrets)
    with channel.lock:
        channel.running = (index, captured)
        _capture.current.captured = captured
    started = time.time()
    try:
        loaded.ready(channel, index)
    except _warm.SetupFailed as e:
        channel.answer(("error", b"", started, time.time(), True, None, e.error))
        return None
    segments = captured.take()
    with channel.lock:
        channel.running = None
        _capture.current.captured = None
        if segments:
            message: Output = ("output", index, segments, captured.dropped)
            channel.conn.send_bytes(pickle.dumps(message, protocol=5))
    return True


def serve(conn: Connection) -> None:
    """Answer each SandboxRun with one Answer per index, or with Missing if it lacks a package not yet loaded.

    While a call runs, its new output goes out as Output messages.
    """
    cache: OrderedDict[str, _Loaded] = OrderedDict()
    meter = _process.PeakMeter()
    channel = _Channel(conn)
    _capture.install()
    state = _process.ProcessState()
    child_calls = _children.install(conn, channel.lock)
    threading.Thread(target=channel.stream, name="faas-output", daemon=True).start()
    channel.send(("ready", os.getpid()))
    try:
        _serve_requests(child_calls, channel, cache, meter, state)
    finally:
        # The sandbox is retired (its worker closed the socket): warm instances get their teardown().
        for loaded in cache.values():
            loaded.close()


def _serve_requests(
    child_calls: _children.ChildCalls,
    channel: _Channel,
    cache: OrderedDict[str, _Loaded],
    meter: _process.PeakMeter,
    state: _process.ProcessState,
) -> None:
    # The version of each function this sandbox ran last, by name.
    versions: dict[str, str] = {}
    while True:
        try:
            request: SandboxRun = child_calls.next_run()
        except (EOFError, OSError):
            return
        _, version, package, blob, indices, memory_limit, max_output, secrets, isolation, max_result = request[:10]
        extras: RunExtras = request[10] if len(request) > 10 else {}
        fresh = False
        loaded = cache.get(version)
        _replace_version(cache, versions, str(extras.get("name", "")), version)
        if loaded is None:
            if package is None:
                channel.send(("missing",))
                continue
            payload, filename, source, reusable = package
            _register_source(filename, source)
            loaded = cache[version] = _Loaded(payload, filename, reusable)
            fresh = True
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)[1].close()
        else:
            cache.move_to_end(version)
        try:
            calls = cloudpickle.loads(blob)
        except BaseException as e:
            now = time.time()
            error = _describe_error(e, 0)
            for _ in indices:
                channel.answer(("error", b"", now, now, fresh, None, error))
            continue
        inputs = int(extras.get("inputs", 1))
        if inputs > 1 and loaded.is_async and isolation != "fresh" and len(indices) > 1:
            limits3 = (memory_limit, max_output, max_result)
            batch = _concurrent.Batch(calls, indices, inputs, float(extras.get("timeout", 0)) or None, limits3, secrets)
            _concurrent.run_at_once(batch, loaded, fresh, _describe_error, lambda m: _send_event(channel, m))
            _process.stop_strays()
            state.restore()
            continue
        for index in indices:
            if isolation == "fresh":
                limits = (memory_limit, max_output, max_result)
                # A warm class is set up here, once: each forked call starts from a copy of its instance.
                set_up = _setup_before_fork(channel, loaded, index, max_output, secrets)
                if set_up is not None:
                    # While the child runs, only it reads the socket: the answers to the calls it makes are its own.
                    with child_calls.paused():
                        _call_in_fork(channel, loaded, calls[index], index, limits, fresh or set_up, state, secrets)
                fresh = False
                continue
            captured = _capture.Captured(max_output, secrets)
            with channel.lock:
                channel.running = (index, captured)
                _capture.current.captured = captured
            limits2 = (memory_limit, max_result)
            answer = _call(loaded, calls[index], limits2, fresh, meter, state, secrets, channel, index)
            fresh = False
            channel.answer(answer)


def main() -> None:
    global _channel_fd
    fd = _channel_fd = int(sys.argv[-1])
    os.register_at_fork(after_in_child=_after_fork_in_child)
    # Before the process state is taken: it stays set for every call, and for what a call starts.
    os.environ[_children.SANDBOX_VARIABLE] = "1"
    _process.become_subreaper()
    worker_path = os.environ.pop("JUPYTER_FAAS_SYS_PATH", None)
    if worker_path:
        # The worker's import path, after this package's own root: functions import what the worker can.
        sys.path[1:] = [entry for entry in json.loads(worker_path) if entry != sys.path[0]]
    threading.Thread(target=_watch_parent, name="faas-parent-watch", daemon=True).start()
    # The protocol has its own socket; a function's prints are captured for its invocation.
    # An OSError means the worker is gone (killed, or closed mid-answer): nobody is left to answer.
    # Any other failure outside a call (a request or answer that no longer (un)pickles) leaves this process
    # in a state nobody can vouch for: it ends, and the worker replaces it. os._exit, because a thread a
    # call left running must not keep a broken sandbox alive.
    code = 0
    try:
        serve(Connection(fd))
    except OSError:
        pass
    except BaseException:
        code = 1
    _process.stop_strays()
    os._exit(code)


if __name__ == "__main__":
    main()
