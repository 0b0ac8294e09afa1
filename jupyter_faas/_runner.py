"""The sandbox process that runs invocations, one at a time, for a worker that can kill and replace it."""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from multiprocessing.connection import Connection

import cloudpickle

from jupyter_faas._code import with_filename

# Functions kept loaded per sandbox; the oldest are dropped first.
_CACHE_SIZE = 64
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


def _reset_peak_memory() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            match = _HWM.search(f.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _register_source(filename: str, source: str) -> None:
    import linecache

    if source:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)


def _describe_error(exc: BaseException, skip_frames: int) -> tuple[str, str, str, bytes | None]:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    text = "".join(traceback.TracebackException(type(exc), exc, tb).format())
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc, protocol=5)
    except Exception:
        exc_bytes = None
    return type(exc).__qualname__, str(exc), text, exc_bytes


def _watch_parent() -> None:
    """Exit when the worker that owns this sandbox is gone, even mid-call."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def serve(conn: Connection) -> None:
    cache: OrderedDict[str, _Loaded] = OrderedDict()
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        _, version, package, args_bytes, memory_limit = request
        fresh = False
        loaded = cache.get(version)
        if loaded is None:
            if package is None:
                conn.send_bytes(pickle.dumps(("missing",)))
                continue
            payload, filename, source, reusable = package
            _register_source(filename, source)
            loaded = cache[version] = _Loaded(payload, filename, reusable)
            fresh = True
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(version)
        _reset_peak_memory()
        started = time.time()
        status, value, error = "ok", b"", None
        try:
            function = loaded.fresh()
            args, kwargs = cloudpickle.loads(args_bytes)
            result = function(*args, **kwargs)
        except MemoryError as e:
            status = "memory"
            error = _describe_error(e, 1)
        except BaseException as e:
            status = "error"
            error = _describe_error(e, 1)
        else:
            try:
                value = cloudpickle.dumps(result, protocol=5)
            except Exception as e:
                status = "error"
                wrapped = TypeError(f"the result ({type(result).__name__}) cannot be sent back: {e}")
                error = (type(wrapped).__name__, str(wrapped), f"TypeError: {wrapped}\n", None)
        finished = time.time()
        peak = _peak_memory()
        if peak is not None and peak > memory_limit and status != "memory":
            status, value, error = "memory", b"", None
        conn.send_bytes(pickle.dumps((status, value, started, finished, fresh, peak, error), protocol=5))


def main() -> None:
    fd = int(sys.argv[1])
    extra_path = os.environ.get("JUPYTER_FAAS_SYS_PATH")
    if extra_path:
        # The embedded cluster shares the notebook's environment, including its import path.
        for entry in reversed(json.loads(extra_path)):
            if entry not in sys.path:
                sys.path.insert(0, entry)
    threading.Thread(target=_watch_parent, name="faas-parent-watch", daemon=True).start()
    # The protocol has its own socket, so a function's prints go to the worker's stdout harmlessly.
    serve(Connection(fd))


if __name__ == "__main__":
    main()
