"""The platform as a function sees it from inside its sandbox: calls go to the platform that runs it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import cloudpickle

from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.admission import Call, InvocationFuture, new_ids
from jupyter_faas.dispatch.outcomes import MapResults
from jupyter_faas.errors import NestedCallError
from jupyter_faas.worker import children as _children
from jupyter_faas.worker.capture import Segments
from jupyter_faas.worker.messages import ChildKind, ChildResult

_FROM_ELSEWHERE = (
    "{name}: a function can call other functions only from the process that runs it, not from a process it "
    "started (a subprocess, multiprocessing, a fork); call it there, or return what it needs"
)


class CallerPlatform:
    """Sends each call to the platform running this invocation, through the worker; never starts a cluster."""

    def invoke(
        self,
        definition: FunctionDefinition,
        blob: bytes,
        queue_timeout: float | None = None,
        trigger: str = "call",
        on_output: Callable[[Segments], None] | None = None,
        background: bool = False,
    ) -> InvocationFuture:
        """One call, run there as any other invocation; a queued one (`background`) is answered once accepted."""
        future = InvocationFuture()
        future.id = new_ids(1)[0]
        kind: ChildKind = "enqueue" if background else "invoke"
        accepted = threading.Event()

        def on_reply(result: ChildResult) -> None:
            status, value, _ = result
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(value if isinstance(value, BaseException) else NestedCallError(str(value)))
            accepted.set()

        future.set_running_or_notify_cancel()
        self._send(definition, kind, future.id, blob, on_reply)
        if background:
            # fn.enqueue() returns an id the platform has taken: wait for it to say so (a moment).
            accepted.wait()
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return future

    def map(self, definition: FunctionDefinition, calls: Sequence[Call]) -> MapResults:
        """Many calls, mapped there; the results arrive together."""
        results = MapResults(len(calls))

        def on_reply(result: ChildResult) -> None:
            status, value, _ = result
            if status == "ok":
                values, errors = cast(tuple[list[Any], list[BaseException | None]], value)
                for slot, (item, error) in enumerate(zip(values, errors, strict=True)):
                    results.complete(slot, item, error)
                return
            error = value if isinstance(value, BaseException) else NestedCallError(str(value))
            for slot in range(len(calls)):
                results.complete(slot, None, error)

        if calls:
            self._send(definition, "map", "", cloudpickle.dumps(list(calls), protocol=5), on_reply)
        return results

    def _send(
        self,
        definition: FunctionDefinition,
        kind: ChildKind,
        child_id: str,
        blob: bytes,
        on_reply: Callable[[ChildResult], None],
    ) -> None:
        calls = _children.active()
        if calls is None:
            raise NestedCallError(_FROM_ELSEWHERE.format(name=definition.name))
        calls.send(kind, child_id, cloudpickle.dumps(definition, protocol=5), blob, on_reply)


def in_sandbox() -> bool:
    return _children.in_sandbox()


def refuse_platform(what: str = "jupyter_faas.platform()") -> NestedCallError:
    """The error for asking for a platform inside a sandbox, where none may start."""
    return NestedCallError(
        f"{what} is not available inside a function: a sandbox never starts a platform or a cluster. "
        "Call other functions directly (fn(x), fn.submit, fn.map, fn.enqueue): they run on the platform "
        "that runs this one"
    )
