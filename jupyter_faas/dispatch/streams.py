"""A generator call's items, from the worker to its caller through a bounded buffer; a setup's time, to the record."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cloudpickle

from jupyter_faas.dispatch.admission import Invocation, InvocationFuture
from jupyter_faas.errors import FaasTimeout
from jupyter_faas.worker.messages import StreamEvent

# Items a caller's buffer holds; past it the worker, and then the sandbox, wait until the caller takes one.
BUFFER_ITEMS = 16

_END = object()


def on_event(invocation: Invocation, event: StreamEvent) -> None:
    """A setup's end or a generator's item, for the invocation's record and its caller."""
    if event[0] == "init":
        invocation.init_ms = event[2]
        return
    invocation.items += 1
    if invocation.first_item is None:
        invocation.first_item = event[3]
    deliver = getattr(invocation.sink, "on_item", None)
    if deliver is not None:
        deliver(event[2])


def stoppable(by_index: dict[int, Invocation], stop: Callable[[int], None] | None) -> None:
    """A job's invocations learn how to stop each of them where they run, or that they no longer run there."""
    for index, invocation in by_index.items():
        invocation.stoppable(None if stop is None else functools.partial(stop, index))


class _Buffer:
    """The items between the platform's thread and the caller; it holds no reference to the caller's stream."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.items: deque[Any] = deque()
        self.lock = threading.Condition()
        self.deadline: float | None = None
        self.abandoned = False
        self.dropped = 0
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def put(self, data: bytes) -> None:
        """One item from the worker; waits while the buffer is full, but never past the stream's timeout."""
        with self.lock:
            if self.deadline is None:
                # The call started before its first item: its own timeout has passed by then for sure.
                self.deadline = time.monotonic() + self.timeout
            while len(self.items) >= BUFFER_ITEMS and not self.abandoned:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    # The worker stops the call at its timeout; until its answer comes, what it sends is dropped.
                    self.dropped += 1
                    return
                self.lock.wait(min(left, 0.5))
            if self.abandoned:
                return
        self.push(data)

    def push(self, entry: Any) -> None:
        with self.lock:
            self.items.append(entry)
            self.lock.notify_all()
            waiters, self.waiters = self.waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_wake, waiter)

    def take(self, block: bool) -> Any:
        with self.lock:
            while not self.items:
                if not block:
                    return None
                # Bounded waits keep Ctrl-C responsive in the notebook's main thread.
                self.lock.wait(0.1)
            entry = self.items.popleft()
            if entry is _END:
                self.items.appendleft(_END)
            else:
                self.lock.notify_all()
        return entry

    def abandon(self) -> bool:
        """Drop what waits and whatever comes after; True the first time, if the end had not come yet."""
        with self.lock:
            ended = any(entry is _END for entry in self.items)
            first = not self.abandoned
            self.abandoned = True
            self.items = deque([_END] if ended else [])
            self.lock.notify_all()
        return first and not ended


class ItemStream(Iterator[Any], AsyncIterator[Any]):
    """What calling a generator function returns: its items as the function yields them, then its end.

    `for item in stream` and `async for item in stream` both work. At most BUFFER_ITEMS wait here; past
    that the function pauses until the caller takes one. An error the function raises (or its timeout)
    is raised by the iteration, after the items that came before it.

    Closing the stream before its end (`close()`, leaving a `with` block, or dropping the last reference,
    as a `for` loop left with `break` does) stops the function where it runs.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self._timeout = timeout
        self._buffer = _Buffer(timeout)
        self._future: InvocationFuture | None = None

    @property
    def id(self) -> str | None:
        """The invocation's id."""
        return getattr(self._future, "id", None)

    @property
    def sink(self) -> Callable[[bytes], None]:
        """What the platform hands each item to: not the stream itself, so that dropping the stream stops the call."""
        return self._buffer.put

    def attach(self, future: InvocationFuture) -> None:
        self._future = future
        buffer = self._buffer
        future.add_done_callback(lambda _: buffer.push(_END))

    # -- the caller's side ---------------------------------------------------------------------------

    def _value(self, entry: Any) -> Any:
        if entry is not _END:
            return cloudpickle.loads(entry)
        if self._buffer.abandoned:
            raise StopIteration  # closed by its caller, as a generator is: how the function ended is not news
        assert self._future is not None
        error = self._future.exception()
        if error is not None:
            raise error.with_traceback(None) from error.__cause__
        if self._buffer.dropped:
            raise FaasTimeout(
                f"{self.name}: the caller did not take {self._buffer.dropped} items within the timeout of "
                f"{self._timeout:g}s, so they were dropped"
            )
        raise StopIteration

    def __iter__(self) -> ItemStream:
        return self

    def __next__(self) -> Any:
        __tracebackhide__ = True
        return self._value(self._buffer.take(block=True))

    def __aiter__(self) -> ItemStream:
        return self

    async def __anext__(self) -> Any:
        buffer = self._buffer
        while True:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            with buffer.lock:
                ready = bool(buffer.items)
                if not ready:
                    buffer.waiters.append((loop, waiter))
            if ready:
                try:
                    return self._value(buffer.take(block=False))
                except StopIteration:
                    raise StopAsyncIteration from None
            await waiter

    def __enter__(self) -> ItemStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading: items still to come are dropped, and the function, if it has not ended, is stopped."""
        if self._buffer.abandon() and self._future is not None:
            self._future.stop_stream()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<items of {self.name}, invocation {self.id}>"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
