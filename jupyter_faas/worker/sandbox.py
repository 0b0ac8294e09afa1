"""The sandbox process that runs invocations, one at a time, for a worker that can kill and replace it."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import resource
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from multiprocessing.connection import Connection

import cloudpickle

from jupyter_faas.worker import capture as _capture
from jupyter_faas.worker.code import with_filename

# Functions kept loaded per sandbox; the oldest are dropped first.
_CACHE_SIZE = 64
# A running invocation's new output is sent this often, so a caller sees it while the call runs.
_OUTPUT_INTERVAL = 0.1
_HWM = re.compile(rb"VmHWM:\s+(\d+) kB")


class _Loaded:
    __slots__ = ("code", "function", "payload", "reusable")

    def __init__(self, payload: bytes, filename: str, reusable: bool) -> None:
        self.payload = payload
        self.reusable = reusable
        function = cloudpickle.loads(payload)
        self.code = with_filename(function.__code__, filename)
        function.__code__ = self.code
        self.function: types.FunctionType | None = function if reusable else None

    def fresh(self) -> types.FunctionType:
        """A function whose globals no earlier call can have touched."""
        if self.function is None:
            function = cloudpickle.loads(self.payload)
            function.__code__ = self.code
            return function
        f = self.function
        # Nothing reachable is mutable, so a new globals dict is enough to undo `global x; x = ...`.
        copy = types.FunctionType(f.__code__, dict(f.__globals__), f.__name__, f.__defaults__, f.__closure__)
        copy.__kwdefaults__ = f.__kwdefaults__
        return copy


class _PeakMeter:
    """This process's peak resident memory, reset only when a call has raised it.

    Resetting costs a write to /proc, so it happens only when a call pushed the peak more than
    _SLACK above the level after the last reset; a reading can therefore include at most _SLACK
    left over from earlier calls, far below any memory limit.
    """

    _SLACK = 2 * 2**20

    def __init__(self) -> None:
        self._reset()
        hwm = self._status_peak()
        # getrusage is twenty times cheaper than /proc/self/status; use it where the reset reaches it.
        self._cheap = hwm is not None and abs(self._rusage_peak() - hwm) <= self._SLACK
        self._floor = self.read() or 0

    @staticmethod
    def _reset() -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def _status_peak() -> int | None:
        try:
            with open("/proc/self/status", "rb") as f:
                match = _HWM.search(f.read())
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    @staticmethod
    def _rusage_peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def read(self) -> int | None:
        return self._rusage_peak() if self._cheap else self._status_peak()

    def after_call(self) -> int | None:
        """The peak since the last reset; resets it if this call raised it."""
        peak = self.read()
        if peak is not None and peak > self._floor + self._SLACK:
            self._reset()
            self._floor = self.read() or 0
        return peak


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


def _describe_error(
    exc: BaseException, skip_frames: int, secrets: dict[str, str] | None = None
) -> tuple[str, str, str, bytes | None]:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
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


def _watch_parent() -> None:
    """Exit when the worker that owns this sandbox is gone, even mid-call."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


class _Channel:
    """The socket to the worker, shared by the call loop and the output streamer, one message at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        # (index, capture) of the invocation running now, whose output the streamer sends.
        self.running: tuple[int, _capture.Captured] | None = None

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send_bytes(pickle.dumps(message, protocol=5))

    def answer(self, answer: tuple) -> None:
        """The invocation's answer, carrying its output not yet streamed; nothing of it is streamed after."""
        with self.lock:
            running, self.running = self.running, None
            output = None
            if running is not None:
                _capture.current.captured = None
                captured = running[1]
                output = (captured.take(), captured.dropped)
            self.conn.send_bytes(pickle.dumps((*answer, output), protocol=5))

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
                        self.conn.send_bytes(pickle.dumps(("output", index, segments, captured.dropped), protocol=5))
                    except OSError:
                        return


_SANDBOX_PID = os.getpid()


class _Forks:
    """Processes forked during the current call, so the ones left running can be stopped after it."""

    count = 0


def _after_fork_in_child() -> None:
    # A forked copy of the sandbox must never speak on the worker's socket, nor capture for the call.
    _capture.current.captured = None
    if _channel_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_channel_fd)


def _after_fork_in_parent() -> None:
    _Forks.count += 1


_channel_fd: int | None = None


def _run_function(function: types.FunctionType, args: tuple, kwargs: dict) -> object:
    try:
        return function(*args, **kwargs)
    finally:
        if os.getpid() != _SANDBOX_PID:
            # A forked child returning from the function: it ends here, it does not answer.
            os._exit(0)


def _stop_strays() -> None:
    """Kill the processes the call forked and left running: an invocation leaves nothing behind."""
    try:
        import psutil

        strays = psutil.Process().children(recursive=True)
    except Exception:
        return
    for stray in strays:
        with contextlib.suppress(Exception):
            stray.kill()
    for stray in strays:
        with contextlib.suppress(Exception):
            stray.wait(timeout=5)


def _call(
    loaded: _Loaded,
    call: tuple[tuple, dict],
    memory_limit: int,
    fresh: bool,
    meter: _PeakMeter,
    secrets: dict[str, str] | None = None,
) -> tuple:
    """One invocation, answered as (status, value, started, finished, fresh, peak, error)."""
    started = time.time()
    status, value, error = "ok", b"", None
    _Forks.count = 0
    saved = {name: os.environ.get(name) for name in secrets} if secrets else {}
    if secrets:
        os.environ.update(secrets)
    try:
        args, kwargs = call
        result = _run_function(loaded.fresh(), args, kwargs)
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
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        if _Forks.count:
            _stop_strays()
    finished = time.time()
    peak = meter.after_call()
    if peak is not None and peak > memory_limit and status != "memory":
        status, value, error = "memory", b"", None
    return (status, value, started, finished, fresh, peak, error)


def serve(conn: Connection) -> None:
    """Answer ("run", version, package, blob, indices, memory, max_output, secrets) with one message per index.

    While a call runs, its new output goes out as ("output", index, segments, dropped) messages.
    """
    cache: OrderedDict[str, _Loaded] = OrderedDict()
    meter = _PeakMeter()
    channel = _Channel(conn)
    _capture.install()
    threading.Thread(target=channel.stream, name="faas-output", daemon=True).start()
    channel.send(("ready", os.getpid()))
    while True:
        try:
            _, version, package, blob, indices, memory_limit, max_output, secrets = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        fresh = False
        loaded = cache.get(version)
        if loaded is None:
            if package is None:
                channel.send(("missing",))
                continue
            payload, filename, source, reusable = package
            _register_source(filename, source)
            loaded = cache[version] = _Loaded(payload, filename, reusable)
            fresh = True
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
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
        for index in indices:
            captured = _capture.Captured(max_output, secrets)
            with channel.lock:
                channel.running = (index, captured)
                _capture.current.captured = captured
            answer = _call(loaded, calls[index], memory_limit, fresh, meter, secrets)
            fresh = False
            channel.answer(answer)


def main() -> None:
    global _channel_fd
    fd = _channel_fd = int(sys.argv[-1])
    os.register_at_fork(after_in_child=_after_fork_in_child, after_in_parent=_after_fork_in_parent)
    worker_path = os.environ.get("JUPYTER_FAAS_SYS_PATH")
    if worker_path:
        # The worker's import path, after this package's own root: functions import what the worker can.
        sys.path[1:] = [entry for entry in json.loads(worker_path) if entry != sys.path[0]]
    threading.Thread(target=_watch_parent, name="faas-parent-watch", daemon=True).start()
    # The protocol has its own socket; a function's prints are captured for its invocation.
    # An OSError means the worker is gone (killed, or closed mid-answer): nobody is left to answer.
    with contextlib.suppress(OSError):
        serve(Connection(fd))


if __name__ == "__main__":
    main()
