"""The sandbox process that runs invocations, one at a time, for a worker that can kill and replace it."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import os
import pickle
import re
import resource
import signal
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from jupyter_faas.errors import ResultTooLarge
from jupyter_faas.worker import capture as _capture
from jupyter_faas.worker.code import with_filename

# Functions kept loaded per sandbox; the oldest are dropped first.
_CACHE_SIZE = 64
# A running invocation's new output is sent this often, so a caller sees it while the call runs.
_OUTPUT_INTERVAL = 0.1
_HWM = re.compile(rb"VmHWM:\s+(\d+) kB")
# prctl option: orphaned descendants are re-parented to this process, not to init, so none escapes it.
_PR_SET_CHILD_SUBREAPER = 36
# Signals whose handlers cannot be read or set.
_FIXED_SIGNALS = {signal.SIGKILL, signal.SIGSTOP}


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
            _stop_strays()
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
                output = (captured.close(), captured.dropped)
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


class _Zygote:
    """Set while this sandbox forks the process of a fresh call, which does speak for its call."""

    forking = False


def _after_fork_in_child() -> None:
    # A forked copy of the sandbox must never speak on the worker's socket, nor capture for the call.
    if _Zygote.forking:
        return
    _capture.current.captured = None
    if _channel_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_channel_fd)


_channel_fd: int | None = None


def _run_function(function: types.FunctionType, args: tuple, kwargs: dict) -> object:
    try:
        return function(*args, **kwargs)
    finally:
        if os.getpid() != _SANDBOX_PID:
            # A forked child returning from the function: it ends here, it does not answer.
            os._exit(0)


def _children() -> list[int]:
    """This process's child processes; as a subreaper it inherits every orphaned descendant too."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.extend(int(pid) for pid in f.read().split())
    except OSError:
        import psutil

        with contextlib.suppress(psutil.Error):
            pids = [child.pid for child in psutil.Process().children()]
    return pids


def _stop_strays() -> None:
    """Kill every process the call started and left running (subprocess, fork, setsid): a call leaves nothing.

    Killing a child re-parents its own children to this subreaper, so repeat until none are left.
    """
    for _ in range(1000):
        pids = _children()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    # Orphans that ended on their own are zombies of this subreaper until reaped.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class _ProcessState:
    """What a call can change in this process and the next call must not see; taken once, restored after each.

    Imported modules (sys.modules) and their attributes are kept on purpose, as in a warm container.
    """

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.environ = dict(os.environ)
        self.path = list(sys.path)
        self.argv = list(sys.argv)
        self.recursion_limit = sys.getrecursionlimit()
        self.stdio = (sys.stdin, sys.stdout, sys.stderr)
        self.displayhook, self.excepthook = sys.displayhook, sys.excepthook
        self.builtins = dict(builtins.__dict__)
        self.blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.signals: dict[signal.Signals, Any] = {}
        for signum in signal.valid_signals():
            if signum in _FIXED_SIGNALS:
                continue
            with contextlib.suppress(ValueError, OSError):
                handler = signal.getsignal(signum)
                if handler is not None:
                    self.signals[signum] = handler

    def restore(self) -> None:
        # builtins first: the rest of this, and the answer's pickling, rely on them.
        current = builtins.__dict__
        for name in [name for name in current if name not in self.builtins]:
            del current[name]
        for name, value in self.builtins.items():
            if current.get(name, _MISSING) is not value:
                current[name] = value
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        os.umask(self.umask)
        for name in [name for name in os.environ if name not in self.environ]:
            del os.environ[name]
        for name, value in self.environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        sys.path[:] = self.path
        sys.argv[:] = self.argv
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        sys.stdin, sys.stdout, sys.stderr = self.stdio
        sys.displayhook, sys.excepthook = self.displayhook, self.excepthook
        # A timer a call armed would otherwise fire during a later call, on the handler restored below.
        for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            with contextlib.suppress(OSError):
                signal.setitimer(timer, 0)
        for signum, handler in self.signals.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.blocked)


_MISSING = object()


def _call(
    loaded: _Loaded,
    call: tuple[tuple, dict],
    limits: tuple[int, int],
    fresh: bool,
    meter: _PeakMeter,
    state: _ProcessState,
    secrets: dict[str, str] | None = None,
) -> tuple:
    """One invocation, answered as (status, value, started, finished, fresh, peak, error).

    Its secrets are in the environment only while it runs; afterwards the process is as it was before it.
    `limits` are the memory limit and the largest result, serialized, that may be sent back.
    """
    memory_limit, max_result = limits
    started = time.time()
    status, value, error = "ok", b"", None
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
        _stop_strays()
        state.restore()
    finished = time.time()
    peak = meter.after_call()
    if peak is not None and peak > memory_limit and status != "memory":
        status, value, error = "memory", b"", None
    return (status, value, started, finished, fresh, peak, error)


def _call_in_fork(
    channel: _Channel,
    loaded: _Loaded,
    call: tuple[tuple, dict],
    index: int,
    limits: tuple[int, int, int],
    fresh: bool,
    state: _ProcessState,
    secrets: dict[str, str] | None,
) -> None:
    """One invocation in a process forked for it from this warm one, which it cannot change: it ends after.

    The child answers on the worker's socket itself; the sandbox only waits for it, and answers for it if
    it died without answering.
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
            _become_subreaper()
            captured = _capture.Captured(max_output, secrets)
            channel.running = (index, captured)
            _capture.current.captured = captured
            threading.Thread(target=channel.stream, name="faas-output", daemon=True).start()
            channel.answer(_call(loaded, call, (memory_limit, max_result), fresh, _PeakMeter(), state, secrets))
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


def serve(conn: Connection) -> None:
    """Answer ("run", version, package, blob, indices, memory, max_output, secrets, isolation, max_result) with one
    message per index.

    While a call runs, its new output goes out as ("output", index, segments, dropped) messages.
    """
    cache: OrderedDict[str, _Loaded] = OrderedDict()
    meter = _PeakMeter()
    channel = _Channel(conn)
    _capture.install()
    state = _ProcessState()
    threading.Thread(target=channel.stream, name="faas-output", daemon=True).start()
    channel.send(("ready", os.getpid()))
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        _, version, package, blob, indices, memory_limit, max_output, secrets, isolation, max_result = request
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
            if isolation == "fresh":
                limits = (memory_limit, max_output, max_result)
                _call_in_fork(channel, loaded, calls[index], index, limits, fresh, state, secrets)
                fresh = False
                continue
            captured = _capture.Captured(max_output, secrets)
            with channel.lock:
                channel.running = (index, captured)
                _capture.current.captured = captured
            answer = _call(loaded, calls[index], (memory_limit, max_result), fresh, meter, state, secrets)
            fresh = False
            channel.answer(answer)


def _become_subreaper() -> None:
    """Orphans of the processes a call starts come back to this process, so it can stop them all."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def main() -> None:
    global _channel_fd
    fd = _channel_fd = int(sys.argv[-1])
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _become_subreaper()
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
    _stop_strays()
    os._exit(code)


if __name__ == "__main__":
    main()
