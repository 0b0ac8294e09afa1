"""The WebAssembly runtime: a Python cell built into a component, run by wasmtime in a fresh instance per call."""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import psutil

try:
    import wasmtime
    from wasmtime import component as _component
except ImportError:  # without the [wasm] extra a WebAssembly cell still unpickles; running it says what to install
    wasmtime = None  # type: ignore[assignment]

from jupyter_faas.errors import FaasMemoryError, FaasTimeout, RemoteError, RuntimeFailure
from jupyter_faas.units import format_size
from jupyter_faas.worker import runtimes as _runtimes

GUEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wasm_guest")
WIT_WORLD = "cell"
# What a machine needs for --runtime wasm: the build (componentize-py) and the engine (wasmtime).
INSTALL = "pip install 'jupyter-faas[wasm]'"


def available() -> bool:
    """Whether wasmtime is installed in this process."""
    return wasmtime is not None


# Components kept loaded per sandbox; the oldest are dropped first.
_LOADED = 8
# Epoch ticks: far past any tick the alarm will ever make.
_NO_DEADLINE = 2**40
# Below this, the store's memory limit leaves CPython no room to start in.
_MIN_STORE_MEMORY = 32 * 2**20


@dataclass(frozen=True)
class WasmProgram(_runtimes.Program):
    """A Python cell built into a WebAssembly component: the artefact's path and digest, and what it may read."""

    runtime: ClassVar[str] = "wasm"
    # The component, as built (state dir, by content hash).
    component: str = ""
    digest: str = ""
    # The component compiled by wasmtime for this engine (serialized): loaded in milliseconds.
    precompiled: str = ""
    # One directory the cell may read, at the same path inside; None: no filesystem at all.
    allow_read: str | None = None


def engine_config() -> wasmtime.Config:
    """The engine settings a serialized component must have been compiled with to load here."""
    config = wasmtime.Config()
    # The timeout: a timer bumps the epoch, and code past its deadline traps.
    config.epoch_interruption = True
    return config


def engine() -> wasmtime.Engine:
    return wasmtime.Engine(engine_config())


def precompile(engine_: wasmtime.Engine, component_path: str, target: str) -> None:
    """Compile the component for this engine and write it, serialized, to `target` (atomically)."""
    compiled = _component.Component.from_file(engine_, component_path)
    _write_atomically(target, compiled.serialize())


def _write_atomically(target: str, data: bytes | bytearray) -> None:
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def guest_error(name: str, payload: str) -> BaseException:
    """The cell's exception, rebuilt: a built-in type keeps its type, with the cell's traceback as a note."""
    try:
        described = json.loads(payload)
        type_name, message, text = str(described["type"]), str(described["message"]), str(described["traceback"])
    except (ValueError, KeyError, TypeError):
        return RemoteError("WasmError", payload[:2000])
    if type_name == "MemoryError":
        return FaasMemoryError(f"{name} ran out of memory in WebAssembly (its memory limit): {message}".rstrip(": "))
    kind = getattr(builtins, type_name, None)
    error: BaseException
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            error = kind(message)
        except Exception:
            error = RemoteError(type_name, message)
    else:
        error = RemoteError(type_name, message)
    error.add_note(f"In WebAssembly:\n{text.rstrip()}")
    return error


class _Alarm:
    """One thread per engine that bumps its epoch once the running call's deadline passes: the call traps.

    Started once; starting a timer thread for each call cost more than the call itself.
    """

    def __init__(self, engine_: wasmtime.Engine) -> None:
        self._engine = engine_
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._fired = False
        self._closed = False
        threading.Thread(target=self._watch, name="faas-wasm-alarm", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._changed:
            self._deadline, self._fired = time.monotonic() + seconds, False
            self._changed.notify()

    def disarm(self) -> bool:
        """Stop watching; whether the deadline had passed (the call was interrupted)."""
        with self._changed:
            self._deadline = None
            self._changed.notify()
            return self._fired

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if self._deadline is None:
                    self._changed.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._changed.wait(remaining)
                    continue
                self._fired, self._deadline = True, None
                self._engine.increment_epoch()


def _instance_key(program: WasmProgram) -> tuple[str, str | None, int]:
    """What an instance is made for: its component, its grant, and its memory limit (the store's)."""
    return (program.digest, program.allow_read, program.memory)


@dataclass
class _Instance:
    """A fresh instance no call has run in, with its store and the output its WASI streams collect."""

    key: tuple[str, str | None, int]
    store: wasmtime.Store
    instance: _component.Instance
    output: list[tuple[str, bytes]]
    init_ms: float


class WasmRuntime(_runtimes.Runtime):
    """One wasmtime engine per sandbox; each call gets a new Store and instance of its component.

    The instance for the next call is made right after a call ends, off the call's path, on a thread of its own
    (wasmtime releases the GIL); the old store is dropped there too. A call still runs in an instance no call
    ran in: one made ahead for the same component, grant and memory limit, or else one made on the spot.
    """

    def __init__(self) -> None:
        self._engine: wasmtime.Engine | None = None
        self._linker: _component.Linker | None = None
        self._components: OrderedDict[str, _component.Component] = OrderedDict()
        self._process = psutil.Process()
        self._alarm: _Alarm | None = None
        # Made ahead: the instance for the next call, and the store of the last one, still to drop.
        self._ahead: Future[_Instance] | None = None
        self._helper: ThreadPoolExecutor | None = None
        self._owner = os.getpid()

    def start(self) -> None:
        if wasmtime is None:
            raise RuntimeFailure(f"--runtime wasm needs wasmtime on the worker: {INSTALL}")
        self._engine = engine()
        self._linker = _component.Linker(self._engine)
        self._linker.add_wasip2()
        self._alarm = _Alarm(self._engine)
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faas-wasm-ahead")
        self._owner = os.getpid()

    def stop(self) -> None:
        # Closed now, not at interpreter exit, when wasmtime's own module may already be torn down.
        if self._helper is not None:
            self._helper.shutdown(wait=True)
        self._helper, self._ahead = None, None
        if self._alarm is not None:
            self._alarm.close()
        for loaded in self._components.values():
            loaded.close()
        self._components.clear()
        if self._linker is not None:
            self._linker.close()
        if self._engine is not None:
            self._engine.close()
        self._linker = None
        self._engine = None

    def _load(self, program: WasmProgram) -> _component.Component:
        loaded = self._components.get(program.digest)
        if loaded is not None:
            self._components.move_to_end(program.digest)
            return loaded
        assert self._engine is not None
        if not os.path.exists(program.precompiled):
            if not os.path.exists(program.component):
                raise RuntimeFailure(
                    f"{program.name}: its WebAssembly component {program.component} is not on this worker; "
                    "workers need the platform's faas.state-dir (a shared folder)"
                )
            # Compiled once per worker and kept: the next sandbox loads it in milliseconds.
            precompile(self._engine, program.component, program.precompiled)
        loaded = _component.Component.deserialize_file(self._engine, program.precompiled)
        self._components[program.digest] = loaded
        while len(self._components) > _LOADED:
            self._components.popitem(last=False)
        return loaded

    def _instantiate(self, program: WasmProgram) -> _Instance:
        """A new store and instance of the program's component, with its grant and its memory limit."""
        engine_, linker = self._engine, self._linker
        assert engine_ is not None and linker is not None
        component = self._load(program)
        began = time.perf_counter()
        store = wasmtime.Store(engine_)
        wasi = wasmtime.WasiConfig()
        # wasmtime may call these on a thread of its own, where the capture does not see whose output it is:
        # they collect it, and the call's thread writes it out, in order, when the call ends.
        output: list[tuple[str, bytes]] = []
        wasi.stdout_custom = lambda data: output.append(("stdout", bytes(data)))
        wasi.stderr_custom = lambda data: output.append(("stderr", bytes(data)))
        if program.allow_read:
            wasi.preopen_dir(program.allow_read, program.allow_read, fs_mutable=False)
        store.set_wasi(wasi)
        store.set_limits(memory_size=self._store_memory(program.memory))
        # No deadline while it is made (a deadline already past would trap it); the call sets its own.
        store.set_epoch_deadline(_NO_DEADLINE)
        try:
            instance = linker.instantiate(store, component)
        except wasmtime.WasmtimeError as e:
            raise FaasMemoryError(
                f"{program.name}: its WebAssembly instance does not fit in its memory limit of "
                f"{format_size(program.memory)}: {str(e).splitlines()[0]}"
            ) from None
        return _Instance(_instance_key(program), store, instance, output, _runtimes.elapsed_ms(began))

    def _made_ahead(self, program: WasmProgram) -> _Instance | None:
        """The instance made ahead, if it was made for this program's component, grant and memory limit (waiting
        for it if it is still being made)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or os.getpid() != self._owner:
            return None  # in a process forked from the sandbox, the helper thread did not come along
        try:
            ready = ahead.result()
        except Exception:
            return None  # made on the spot instead, where its error reaches the call
        return ready if ready.key == _instance_key(program) else None

    def _make_next(self, program: WasmProgram, used: _Instance) -> None:
        """After a call: drop its store, and make the next call's instance, both off the call's path."""
        helper = self._helper
        if helper is None or os.getpid() != self._owner:
            return

        # The next instance first: the next call may already be on its way. Then the old store goes.
        self._ahead = helper.submit(self._instantiate, program)
        helper.submit(used.store.close)

    def run(self, program: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        assert isinstance(program, WasmProgram)
        texts = [program.json_text(f"#{i + 1}", value) for i, value in enumerate(args)]
        texts_kw = {key: program.json_text(key, value) for key, value in kwargs.items()}
        arguments = f"[[{', '.join(texts)}], {{{', '.join(f'{json.dumps(k)}: {v}' for k, v in texts_kw.items())}}}]"
        if self._engine is None or self._linker is None:
            self.start()
        alarm = self._alarm
        assert alarm is not None
        ready = self._made_ahead(program) or self._instantiate(program)
        _runtimes.last_init_ms = ready.init_ms
        store = ready.store
        # Counted from now: the instance may have been made a while ago.
        store.set_epoch_deadline(1)
        alarm.arm(program.deadline_seconds())
        try:
            call = ready.instance.get_func(store, "call")
            assert call is not None
            try:
                answer = call(store, arguments)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
                if alarm.disarm():
                    raise FaasTimeout(
                        f"{program.name} ran past its timeout of {program.timeout:g}s and was stopped"
                    ) from None
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise RemoteError("WasmTrap", f"{program.name} trapped in WebAssembly: {first}") from None
        finally:
            alarm.disarm()
            # Consecutive pieces of one stream are decoded together: a character may be split between them.
            for stream, pieces in itertools.groupby(ready.output, key=lambda piece: piece[0]):
                text = b"".join(data for _, data in pieces).decode("utf-8", "replace")
                (sys.stdout if stream == "stdout" else sys.stderr).write(text)
            self._make_next(program, ready)
        if answer.tag == "ok":
            return json.loads(answer.payload)
        raise guest_error(program.name, answer.payload)

    def _store_memory(self, limit: int) -> int:
        """The store's share of the memory limit: what this process does not use already."""
        with contextlib.suppress(psutil.Error):
            limit -= int(self._process.memory_info().rss)
        return max(limit, _MIN_STORE_MEMORY)


_runtimes.RUNTIMES[WasmProgram.runtime] = WasmRuntime
