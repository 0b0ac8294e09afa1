"""Calls made inside an invocation, on the platform that runs it: depth, deadline, secrets, and the answer back."""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.dispatch.admission import Call, Invocation, InvocationFuture
from jupyter_faas.dispatch.outcomes import MapResults
from jupyter_faas.dispatch.transport import Reply
from jupyter_faas.errors import CallDepthExceeded, FaasError, FaasTimeout, NestedCallError
from jupyter_faas.record.deadletters import keep_if_failed
from jupyter_faas.worker.messages import ChildCall, ChildResult

# Versions of functions defined in this process: only they get secrets when called from inside a function,
# so code running in a sandbox cannot make up a definition that asks for the platform's own variables.
_defined_here: set[str] = set()
_defined_lock = threading.Lock()


def defined_here(definition: FunctionDefinition) -> None:
    """Note a function made in this process (by the magic, the decorator, or a served notebook)."""
    if definition.secrets:
        with _defined_lock:
            _defined_here.add(definition.version)


class Runs(Protocol):
    """What composition needs of the platform: the two ways it starts invocations."""

    def invoke(
        self,
        definition: FunctionDefinition,
        blob: bytes,
        queue_timeout: float | None = None,
        trigger: str = "call",
        on_output: Any = None,
        background: bool = False,
        parent: Invocation | None = None,
        invocation_id: str | None = None,
    ) -> InvocationFuture: ...

    def map(
        self, definition: FunctionDefinition, calls: Sequence[Call], parent: Invocation | None = None
    ) -> MapResults: ...


def describe_chain(chain: tuple[str, ...]) -> str:
    """`a → b → b → b` as `a → b (3 times)`: a runaway recursion is one name, not a screenful."""
    runs: list[tuple[str, int]] = []
    for name in chain:
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
    return " → ".join(name if count == 1 else f"{name} ({count} times)" for name, count in runs)


def _dead_letter_if_failed(definition: FunctionDefinition, calls_blob: bytes, future: InvocationFuture) -> None:
    error = future.exception()
    if error is None:
        return
    ((args, kwargs),) = cloudpickle.loads(calls_blob)
    keep_if_failed(future.id, definition.name, definition.version, args, kwargs, error)


def _pickled(result: ChildResult) -> bytes:
    """The answer as it travels; a value or error that cannot travel becomes an error that can."""
    try:
        return bytes(cloudpickle.dumps(result, protocol=5))
    except Exception as e:
        status, value, ids = result
        what = "error" if status == "error" else "result"
        described = f"{type(value).__name__}: {value}" if status == "error" else type(value).__name__
        failure: ChildResult = ("error", FaasError(f"the call's {what} ({described}) cannot be sent back: {e}"), ids)
        return pickle.dumps(failure, protocol=5)


def _answer_of(future: Future[Any], invocation_id: str) -> ChildResult:
    error = future.exception()
    if error is not None:
        return ("error", error, [invocation_id])
    return ("ok", future.result(), [invocation_id])


class Composer:
    """Runs the calls invocations make, as invocations of their own, and cancels them with a stopped caller."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs
        # The calls not yet answered, by the invocation that made them: cancelled if it is stopped.
        self._pending: dict[str, list[InvocationFuture | MapResults]] = {}
        self._lock = threading.Lock()

    def on_call(self, parent: Invocation, call: ChildCall, reply: Reply) -> None:
        """From the dispatcher's thread: start the call, and answer it (now or when it ends) with `reply`."""
        _, _, _, remaining, kind, child_id, definition_blob, calls_blob = call
        try:
            definition = self._definition(parent, definition_blob, remaining)
            if kind == "map":
                self._map(parent, definition, cloudpickle.loads(calls_blob), reply)
                return
            background = kind == "enqueue"
            future = self._runs.invoke(
                definition, calls_blob, trigger="queue" if background else "call", background=background,
                parent=parent, invocation_id=child_id or None,
            )  # fmt: skip
        except Exception as e:
            reply(_pickled(("error", e, [])))
            return
        if background:
            # Queued, and from now on the platform's: it is not cancelled with its caller, and if it fails
            # for good it becomes a dead letter, as a call queued from the notebook does.
            future.add_done_callback(lambda _: _dead_letter_if_failed(definition, calls_blob, future))
            reply(_pickled(("ok", future.id, [future.id])))
            return
        self._hold(parent.id, future)
        future.add_done_callback(lambda _: self._answer(parent.id, future, reply))

    def caller_ended(self, invocation: Invocation, stopped: bool) -> None:
        """An invocation ended; if it was stopped (timeout, memory, a failure), its calls not started are dropped."""
        with self._lock:
            pending = self._pending.pop(invocation.id, [])
        if not stopped:
            return
        for waiting in pending:
            if isinstance(waiting, MapResults):
                waiting.cancelled = True
            else:
                waiting.cancel()

    def _definition(self, parent: Invocation, blob: bytes, remaining: float) -> FunctionDefinition:
        # An empty blob: the caller calls itself (recursion); its deadline is cut again below.
        definition = cloudpickle.loads(blob) if blob else parent.definition
        if not isinstance(definition, FunctionDefinition):
            raise NestedCallError(f"a call from {parent.definition.name} named no function")
        chain = (*parent.chain, definition.name)
        max_depth = _config.compose_max_depth()
        if len(chain) > max_depth:
            raise CallDepthExceeded(
                f"calls nest deeper than faas.compose.max-depth = {max_depth}: {describe_chain(chain)}. "
                "A function that calls itself needs a case that stops, or raise the limit"
            )
        if definition.secrets:
            with _defined_lock:
                trusted = definition.version in _defined_here
            if not trusted:
                raise NestedCallError(
                    f"{definition.name} declares secrets ({', '.join(definition.secrets)}), and was not defined in "
                    "the process that runs the platform: a call from inside a function gets secrets only for "
                    "functions defined there"
                )
        if remaining <= 0:
            raise FaasTimeout(f"{parent.definition.name} has no time left to call {definition.name}")
        if remaining < definition.limits.timeout:
            # A call never outlives its caller's deadline: it gets at most the time the caller has left.
            limits = dataclasses.replace(definition.limits, timeout=remaining)
            definition = dataclasses.replace(definition, limits=limits)
        return definition

    def _map(self, parent: Invocation, definition: FunctionDefinition, calls: list[Call], reply: Reply) -> None:
        results = self._runs.map(definition, calls, parent=parent)
        self._hold(parent.id, results)

        def answer_when_done() -> None:
            results.wait()
            self._let_go(parent.id, results)
            reply(_pickled(("ok", (results.values, results.errors), [])))

        threading.Thread(target=answer_when_done, name="faas-child-map", daemon=True).start()

    def _hold(self, parent_id: str, waiting: InvocationFuture | MapResults) -> None:
        with self._lock:
            self._pending.setdefault(parent_id, []).append(waiting)

    def _let_go(self, parent_id: str, waiting: InvocationFuture | MapResults) -> None:
        with self._lock:
            held = self._pending.get(parent_id)
            if held is not None and waiting in held:
                held.remove(waiting)
                if not held:
                    del self._pending[parent_id]

    def _answer(self, parent_id: str, future: InvocationFuture, reply: Reply) -> None:
        self._let_go(parent_id, future)
        # add_done_callback hands back the very future it was called on.
        if future.cancelled():
            reply(_pickled(("error", FaasError("the call was cancelled: its caller was stopped"), [future.id])))
            return
        reply(_pickled(_answer_of(future, future.id)))
