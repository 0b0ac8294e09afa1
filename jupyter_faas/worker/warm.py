"""In the sandbox: a warm class's instance (setup once, teardown at the end), the event loop, and generators' items."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time
import traceback
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cloudpickle

from jupyter_faas.worker.messages import ErrorInfo

# A call that yields: each item goes out pickled, with the time it was yielded.
SendItem = Callable[[bytes, float], None]
# Told when setup() starts (True) and when it ends (False, with the milliseconds it took).
OnSetup = Callable[[bool, float], None]


class SetupFailed(Exception):
    """setup() raised: the call fails with setup's own error, and the next call tries again."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error[1])
        self.error = error


class ItemTooLarge(Exception):
    """One item is over faas.call.max-bytes."""


def is_async(target: Any) -> bool:
    """Whether calling `target` (a def, or a class's __call__) gives a coroutine or an async generator."""
    function = target.__dict__.get("__call__") if isinstance(target, type) else target
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def rebound_class(cls: type, fn_globals: dict[str, Any], qualname: str | None = None) -> type:
    """The class again, its methods reading `fn_globals` (a call's fresh module globals, or at definition what
    it captured); their zero-argument super() names the new class."""
    namespace: dict[str, Any] = {}
    for key, value in vars(cls).items():
        if key in ("__dict__", "__weakref__") or isinstance(value, types.MemberDescriptorType):
            continue
        wrapper = type(value) if isinstance(value, staticmethod | classmethod) else None
        target = value.__func__ if wrapper is not None else value
        if isinstance(target, types.FunctionType):
            copy = types.FunctionType(
                target.__code__, fn_globals, target.__name__, target.__defaults__, target.__closure__
            )
            copy.__kwdefaults__ = target.__kwdefaults__
            copy.__annotations__ = dict(target.__annotations__)
            copy.__doc__ = target.__doc__
            copy.__qualname__ = target.__qualname__
            value = wrapper(copy) if wrapper is not None else copy
        namespace[key] = value
    if qualname is not None:
        namespace["__qualname__"] = qualname
    rebuilt: type = type(cls)(cls.__name__, cls.__bases__, namespace)
    for key, value in list(vars(rebuilt).items()):
        target = getattr(value, "__func__", value)
        if isinstance(target, types.FunctionType) and "__class__" in target.__code__.co_freevars:
            # Zero-argument super() reads the __class__ cell: it must be the class the instance now has.
            setattr(rebuilt, key, _with_class_cell(value, target, rebuilt))
    return rebuilt


def _with_class_cell(value: Any, target: types.FunctionType, cls: type) -> Any:
    cells = list(target.__closure__ or ())
    cells[target.__code__.co_freevars.index("__class__")] = types.CellType(cls)
    fixed = types.FunctionType(target.__code__, target.__globals__, target.__name__, target.__defaults__, tuple(cells))
    fixed.__kwdefaults__ = target.__kwdefaults__
    fixed.__annotations__ = target.__annotations__
    fixed.__doc__ = target.__doc__
    fixed.__qualname__ = target.__qualname__
    return type(value)(fixed) if isinstance(value, staticmethod | classmethod) else fixed


class WarmInstance:
    """One version of a warm class in one sandbox: its instance, made and set up before its first call."""

    def __init__(self, cls: type, reusable: bool) -> None:
        self.cls = cls
        self.instance: Any = None
        self._reusable = reusable
        call = cls.__dict__["__call__"]
        self._globals: dict[str, Any] = call.__globals__
        # Globals that a call could mutate are rebuilt from these bytes for each call.
        self._pristine = None if reusable else cloudpickle.dumps(self._globals, protocol=5)

    def ready(self, on_setup: OnSetup, describe: Callable[[BaseException, int], ErrorInfo]) -> float | None:
        """Make and set up the instance if this sandbox has none yet: the milliseconds it took, or None."""
        if self.instance is not None:
            return None
        on_setup(True, 0.0)
        started = time.perf_counter()
        try:
            instance = self.cls()
            setup = getattr(instance, "setup", None)
            if setup is not None:
                setup()
        except BaseException as e:
            on_setup(False, (time.perf_counter() - started) * 1000)
            # From the frame of setup() (or of the class's __init__) down: the user's own lines.
            raise SetupFailed(describe(e, 1)) from None
        elapsed = (time.perf_counter() - started) * 1000
        on_setup(False, elapsed)
        self.instance = instance
        return elapsed

    def bound(self) -> Any:
        """The instance, its class rebuilt on fresh module globals: only the instance survives between calls."""
        fn_globals = dict(self._globals) if self._pristine is None else cloudpickle.loads(self._pristine)
        fresh = rebound_class(self.cls, fn_globals)
        try:
            self.instance.__class__ = fresh
        except TypeError:
            self.instance.__class__ = self.cls  # a layout that cannot be swapped keeps the class it has
        return self.instance

    def teardown(self) -> None:
        """Run teardown() if the class has one and setup() ran; its failure is printed, never raised."""
        instance, self.instance = self.instance, None
        hook = getattr(instance, "teardown", None) if instance is not None else None
        if hook is None:
            return
        try:
            hook()
        except BaseException:
            traceback.print_exc(file=sys.__stderr__)


class _Loop:
    """The sandbox's event loop, made on first use and again in a process forked from it."""

    loop: asyncio.AbstractEventLoop | None = None
    pid = 0


def event_loop() -> asyncio.AbstractEventLoop:
    if _Loop.loop is None or _Loop.pid != os.getpid():
        # A forked process must not share its parent's selector: it gets a loop of its own.
        _Loop.loop, _Loop.pid = asyncio.new_event_loop(), os.getpid()
        asyncio.set_event_loop(_Loop.loop)
    return _Loop.loop


def settle(value: Any, send_item: SendItem | None, max_item: int) -> Any:
    """A call's value as it answers: a coroutine awaited, a generator's items sent one by one (it answers None)."""
    if inspect.iscoroutine(value):
        return event_loop().run_until_complete(value)
    if inspect.isgenerator(value):
        _drain(value, send_item, max_item)
        return None
    if inspect.isasyncgen(value):
        event_loop().run_until_complete(_drain_async(value, send_item, max_item))
        return None
    return value


def _pickled(item: Any, max_item: int) -> bytes:
    data: bytes = cloudpickle.dumps(item, protocol=5)
    if len(data) > max_item:
        raise ItemTooLarge(
            f"an item ({type(item).__name__}) is {len(data):,} bytes serialized; the limit is "
            f"faas.call.max-bytes = {max_item:,} bytes per item"
        )
    return data


def _drain(items: Iterator[Any], send_item: SendItem | None, max_item: int) -> None:
    for item in items:
        if send_item is not None:
            # Blocks while the caller is behind: the buffers between here and it are full.
            send_item(_pickled(item, max_item), time.time())


async def _drain_async(items: AsyncIterator[Any], send_item: SendItem | None, max_item: int) -> None:
    async for item in items:
        if send_item is not None:
            send_item(_pickled(item, max_item), time.time())
