"""A generator call's items, from the worker to its caller through a bounded buffer; a setup's time, to the record."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

import cloudpickle

from jupyter_faas.dispatch.admission import Invocation
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


class ItemStream(Iterator[Any], AsyncIterator[Any]):
    """What calling a generator function returns: its items as the function yields them, then its end.

    `for item in stream` and `async for item in stream` both work. At most BUFFER_ITEMS wait here; past
    that the function pauses until the caller takes one. An error the function raises (or its timeout)
    is raised by the iteration, after the items that came before it.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self._timeout = timeout
        self._items: deque[Any] = deque()
        self._lock = threading.Condition()
        self._future: Future[Any] | None = None
        self._deadline: float | None = None
        self._abandoned = False
        self._dropped = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def id(self) -> str | None:
        """The invocation's id."""
        return getattr(self._future, "id", None)

    def attach(self, future: Future[Any]) -> None:
        self._future = future
        future.add_done_callback(lambda _: self._push(_END))

    # -- the platform's side -------------------------------------------------------------------------

    def put(self, data: bytes) -> None:
        """One item from the worker; waits while the buffer is full, but never past the stream's timeout."""
        with self._lock:
            if self._deadline is None:
                # The call started before its first item: its own timeout has passed by then for sure.
                self._deadline = time.monotonic() + self._timeout
            while len(self._items) >= BUFFER_ITEMS and not self._abandoned:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    # The worker stops the call at its timeout; until its answer comes, what it sends is dropped.
                    self._dropped += 1
                    return
                self._lock.wait(min(left, 0.5))
            if self._abandoned:
                return
        self._push(data)

    def _push(self, entry: Any) -> None:
        with self._lock:
            self._items.append(entry)
            self._lock.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_wake, waiter)

    # -- the caller's side ---------------------------------------------------------------------------

    def _take(self, block: bool) -> Any:
        with self._lock:
            while not self._items:
                if not block:
                    return None
                # Bounded waits keep Ctrl-C responsive in the notebook's main thread.
                self._lock.wait(0.1)
            entry = self._items.popleft()
            if entry is _END:
                self._items.appendleft(_END)
            else:
                self._lock.notify_all()
        return entry

    def _value(self, entry: Any) -> Any:
        if entry is not _END:
            return cloudpickle.loads(entry)
        assert self._future is not None
        error = self._future.exception()
        if error is not None:
            raise error.with_traceback(None) from error.__cause__
        if self._dropped:
            raise FaasTimeout(
                f"{self.name}: the caller did not take {self._dropped} items within the timeout of "
                f"{self._timeout:g}s, so they were dropped"
            )
        raise StopIteration

    def __iter__(self) -> ItemStream:
        return self

    def __next__(self) -> Any:
        __tracebackhide__ = True
        return self._value(self._take(block=True))

    def __aiter__(self) -> ItemStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:
                ready = bool(self._items)
                if not ready:
                    self._waiters.append((loop, waiter))
            if ready:
                try:
                    return self._value(self._take(block=False))
                except StopIteration:
                    raise StopAsyncIteration from None
            await waiter

    def close(self) -> None:
        """Stop reading: items still to come are dropped, and the function no longer waits for this caller."""
        with self._lock:
            self._abandoned = True
            self._items = deque(entry for entry in self._items if entry is _END)
            self._lock.notify_all()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<items of {self.name}, invocation {self.id}>"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
