"""Runtimes other than the sandbox's own Python: the interface every one implements, and how a call reaches one.

A cell of another runtime is shipped as an ordinary Python function (made by `entry`), so the sandbox loads,
calls, captures, limits and records it as any other. That function hands its arguments, as JSON, to the warm
runtime this sandbox keeps for the program's kind: a WebAssembly engine in this process, or a runner child
process that speaks a line protocol. A runtime stops a call itself a little before the worker's deadline, so
the sandbox survives; if it cannot, the worker kills the sandbox at the deadline, as for Python.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

# A runtime stops a call at this share of its timeout, less _MARGIN, before the worker's own kill at the timeout.
_SHARE = 0.95
_MARGIN = 0.05


@dataclass(frozen=True)
class Program:
    """One version of a cell for a runtime: everything the runtime needs, picklable, shipped by value."""

    # Which runtime runs it: a key of RUNTIMES.
    runtime: ClassVar[str] = ""
    name: str
    params: tuple[str, ...]
    # JSON defaults of the parameters that have one.
    defaults: dict[str, Any] = field(default_factory=dict)
    timeout: float = 60.0
    memory: int = 2**30

    def deadline_seconds(self) -> float:
        """How long the runtime lets one call run before it stops it, inside the worker's deadline."""
        return max(self.timeout * _SHARE - _MARGIN, 0.01)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """The arguments in parameter order, defaults filled in; the caller has checked them already."""
        values = dict(zip(self.params, args, strict=False))
        values.update(kwargs)
        missing = [name for name in self.params if name not in values and name not in self.defaults]
        if len(args) > len(self.params) or missing or set(kwargs) - set(self.params):
            raise TypeError(f"{self.name}() takes the parameters ({', '.join(self.params)})")
        return [values[name] if name in values else self.defaults[name] for name in self.params]

    def arguments_json(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        """Each argument as JSON text, in parameter order; a value that is not JSON is a TypeError naming it."""
        return [self.json_text(name, value) for name, value in zip(self.params, self.bind(args, kwargs), strict=True)]

    def json_text(self, param: str, value: Any) -> str:
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{self.name}(): the argument {param} ({type(value).__name__}) is not a JSON value: {e}"
            ) from None


class Runtime(ABC):
    """A warm runtime kept by one sandbox process: started on its first call, reused, stopped with the process."""

    @abstractmethod
    def start(self) -> None:
        """Get ready for calls: an engine, or a runner process. Called again after a call that stopped it."""

    @abstractmethod
    def run(self, program: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One invocation, under the program's timeout and memory limit; its output goes to sys.stdout/stderr.

        Raises FaasTimeout or FaasMemoryError when it stopped the call, another exception for the cell's error.
        """

    @abstractmethod
    def stop(self) -> None:
        """Release what `start` took; kill the runner process if there is one."""


# The runtime kinds, by Program.runtime: filled in by each runtime's module when it is imported.
RUNTIMES: dict[str, type[Runtime]] = {}
_running: dict[str, Runtime] = {}
_lock = threading.Lock()
# How long the last call's runtime took to get an instance ready (WebAssembly instantiation), in ms; the
# sandbox takes it for the call's record (take_init_ms).
last_init_ms: float | None = None


def runtime_for(kind: str) -> Runtime:
    """This process's warm runtime of `kind`, started once."""
    with _lock:
        runtime = _running.get(kind)
        if runtime is None:
            runtime = _running[kind] = RUNTIMES[kind]()
            runtime.start()
        return runtime


def invoke(program: Program, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one call of `program` on its warm runtime."""
    global last_init_ms
    last_init_ms = None
    return runtime_for(program.runtime).run(program, args, kwargs)


def take_init_ms() -> float | None:
    """The instantiation time the call that just ended left, or None; taken once, so no later call reports it."""
    global last_init_ms
    taken, last_init_ms = last_init_ms, None
    return taken


def stop_all() -> None:
    """Stop every warm runtime of this process."""
    with _lock:
        runtimes = list(_running.values())
        _running.clear()
    for runtime in runtimes:
        runtime.stop()


# A notebook that ran a cell with .local() keeps its runtimes until it exits.
atexit.register(stop_all)


def entry(program: Program) -> Callable[..., Any]:
    """The Python function a runtime's cell is shipped as: the sandbox calls it like any function."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return invoke(program, args, kwargs)
        except BaseException as error:
            # The runtime's own frames say nothing about the cell: its error carries the cell's line.
            raise error.with_traceback(None) from None

    call.__name__ = call.__qualname__ = program.name
    call.__doc__ = f"{program.name}: a {program.runtime} cell"
    return call


def elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
