"""In the sandbox: the calls of an async function with --inputs N, run N at a time on its event loop."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import cloudpickle

from jupyter_faas.worker import capture as _capture
from jupyter_faas.worker import warm as _warm
from jupyter_faas.worker.messages import AnswerStatus, ErrorInfo, IndexedAnswer, InitDone, Item, SetupStarted

Describe = Callable[..., ErrorInfo]
Send = Callable[[SetupStarted | InitDone | Item | IndexedAnswer], None]


class Loaded(Protocol):
    """What the sandbox has loaded: a fresh callable per call, and a warm class's setup."""

    warm: _warm.WarmInstance | None

    def fresh(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Batch:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    indices: list[int]
    inputs: int
    # Each call's own timeout: it cancels that call's task, and no other.
    timeout: float | None
    # (memory limit, max output, max result)
    limits: tuple[int, int, int]
    secrets: dict[str, str] | None


def run_at_once(batch: Batch, loaded: Loaded, fresh: bool, describe: Describe, send: Send) -> None:
    """Answer every call of the batch, up to `inputs` running at once; answers go out as each call ends."""
    if batch.secrets:
        os.environ.update(batch.secrets)
    first = batch.indices[0]
    if loaded.warm is not None and loaded.warm.instance is None:

        def on_setup(starting: bool, elapsed_ms: float) -> None:
            send(("setup", first) if starting else ("init", first, elapsed_ms))

        started = time.time()
        try:
            loaded.warm.ready(on_setup, describe)
        except _warm.SetupFailed as e:
            for index in batch.indices:
                send(("answer-at", index, ("error", b"", started, time.time(), True, None, e.error, None)))
            return
        fresh = True
    loop = _warm.event_loop()
    loop.run_until_complete(_all(batch, loaded, fresh, describe, send))


async def _all(batch: Batch, loaded: Loaded, fresh: bool, describe: Describe, send: Send) -> None:
    room = asyncio.Semaphore(batch.inputs)
    first = batch.indices[0]

    async def one(index: int) -> None:
        async with room:
            await _one(batch, index, loaded, fresh and index == first, describe, send)

    await asyncio.gather(*(one(index) for index in batch.indices))


async def _one(batch: Batch, index: int, loaded: Loaded, fresh: bool, describe: Describe, send: Send) -> None:
    _, max_output, max_result = batch.limits
    captured = _capture.Captured(max_output, batch.secrets)
    # This task's own context: what it prints is its own, not another call's.
    _capture.current.captured = captured
    started = time.time()
    status: AnswerStatus = "ok"
    value, error = b"", cast(ErrorInfo | None, None)
    args, kwargs = batch.calls[index]
    try:
        produced = loaded.fresh()(*args, **kwargs)
        # An async generator's items go out as it yields them; it answers None.
        work = _items(produced, index, max_result, send) if inspect.isasyncgen(produced) else produced
        result: Any = await asyncio.wait_for(work, batch.timeout)
        value = cloudpickle.dumps(result, protocol=5)
        if len(value) > max_result:
            value = b""
            message = f"the result is over faas.call.max-bytes = {max_result:,} bytes"
            status, error = "error", ("ResultTooLarge", message, f"ResultTooLarge: {message}\n", None)
    except TimeoutError:
        status = "timeout"
        message = f"it ran past its timeout of {batch.timeout:g}s and its task was cancelled"
        error = ("FaasTimeout", message, "", None)
    except MemoryError as e:
        status, error = "memory", describe(e, 0, batch.secrets)
    except BaseException as e:
        status, error = "error", describe(e, 0, batch.secrets)
    _capture.current.captured = None
    output = (captured.close(), captured.dropped)
    send(("answer-at", index, (status, value, started, time.time(), fresh, None, error, output)))


async def _items(produced: Any, index: int, max_item: int, send: Send) -> None:
    async for item in produced:
        data = cloudpickle.dumps(item, protocol=5)
        if len(data) > max_item:
            raise _warm.ItemTooLarge(f"an item is {len(data):,} bytes serialized; faas.call.max-bytes is {max_item:,}")
        send(("item", index, data, time.time()))
