"""What a function is: a plain def, async, a generator, or a class with a warm setup; and how a class is rebound."""

from __future__ import annotations

import inspect
import types
from typing import Any, Literal

from jupyter_faas.definition.limits import Limits
from jupyter_faas.errors import DefinitionError
from jupyter_faas.worker.warm import rebound_class

# How a function answers: one value ("def", "async"), or a stream of items ("generator", "async_generator").
Kind = Literal["def", "async", "generator", "async_generator"]

STREAMING: frozenset[str] = frozenset({"generator", "async_generator"})


def kind_of(function: types.FunctionType) -> Kind:
    if inspect.isasyncgenfunction(function):
        return "async_generator"
    if inspect.iscoroutinefunction(function):
        return "async"
    if inspect.isgeneratorfunction(function):
        return "generator"
    return "def"


def call_method(cls: type, name: str) -> types.FunctionType:
    """The class's own `__call__`, a def: what each invocation runs on the warm instance."""
    method = cls.__dict__.get("__call__")
    if not isinstance(method, types.FunctionType):
        raise DefinitionError(
            f"{name} is a class, so it needs a __call__ method (a def) that each invocation runs, "
            "e.g. def __call__(self, text: str) -> str"
        )
    for optional in ("setup", "teardown"):
        hook = cls.__dict__.get(optional)
        if hook is not None and not isinstance(hook, types.FunctionType):
            raise DefinitionError(f"{name}.{optional} must be a plain method: def {optional}(self)")
        if isinstance(hook, types.FunctionType):
            if inspect.iscoroutinefunction(hook) or inspect.isgeneratorfunction(hook):
                raise DefinitionError(f"{name}.{optional} must be a plain def, not async or a generator")
            required = [
                p
                for p in list(inspect.signature(hook).parameters.values())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                raise DefinitionError(f"{name}.{optional} takes only self; it is called with no arguments")
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise DefinitionError(
            f"{name} must be constructible with no arguments: the sandbox makes the instance itself; "
            "load what it needs in setup()"
        ) from None
    return method


def call_signature(cls: type) -> inspect.Signature:
    """`__call__`'s signature without `self`: what callers pass."""
    signature = inspect.signature(cls.__dict__["__call__"])
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def check_inputs(name: str, kind: Kind, limits: Limits, option: str = "inputs") -> None:
    if limits.inputs > 1 and kind not in ("async", "async_generator"):
        raise DefinitionError(
            f"{name}: {option} {limits.inputs} lets one sandbox run several invocations at once on its event loop, "
            f"which only an async function can share; {name} is a plain def, so each sandbox runs one call at a "
            f"time. Make it `async def`, or leave {option} at 1"
        )


def rebind(cls: type, fn_globals: dict[str, Any], qualname: str) -> type:
    """A copy of the class whose methods read `fn_globals`: what it captured, and nothing of the notebook."""
    return rebound_class(cls, fn_globals, qualname)


def methods(cls: type) -> list[types.FunctionType]:
    """The class's own functions, unwrapped: whose global reads are captured."""
    found = []
    for value in vars(cls).values():
        target = getattr(value, "__func__", value)
        if isinstance(target, types.FunctionType):
            found.append(target)
    return found
