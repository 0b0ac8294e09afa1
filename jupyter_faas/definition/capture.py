"""What a function takes with it: the globals it reads, captured by value, and its payload pickled within a limit."""

from __future__ import annotations

import builtins
import dis
import functools
import math
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.errors import DefinitionError
from jupyter_faas.units import format_size
from jupyter_faas.worker.children import Callee

# Module name given to cell-defined code, so that cloudpickle always ships it by value.
CELL_MODULE = "__faas__"

_IMMUTABLE_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, types.ModuleType)


# -- finding the names a function reads from its globals ---------------------------------------------


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _global_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """(names read, names written) through the globals of `code` and the code nested in it."""
    read: set[str] = set()
    written: set[str] = set()
    for inner in _code_objects(code):
        for instruction in dis.get_instructions(inner):
            if instruction.opname == "LOAD_GLOBAL" or (instruction.opname == "LOAD_NAME" and inner is not code):
                read.add(instruction.argval)
            elif instruction.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                written.add(instruction.argval)
    return read, written


def _functions_of(value: Any) -> Iterator[types.FunctionType]:
    if isinstance(value, types.FunctionType):
        yield value
    elif isinstance(value, type):
        for attribute in vars(value).values():
            target = getattr(attribute, "__func__", attribute)
            if isinstance(target, types.FunctionType):
                yield target


_NOT_CAPTURED = ("__name__", "__builtins__")


def capture(
    name: str,
    root: types.FunctionType | list[types.FunctionType],
    namespaces: Sequence[Mapping[str, Any]],
    shares_globals: Callable[[types.FunctionType], bool],
) -> dict[str, Any]:
    """Resolve every global the function reads, first in the first namespace, following helpers that share
    its globals; names that resolve nowhere fail the definition, all of them named at once.
    """

    def lookup(key: str) -> tuple[bool, Any]:
        for namespace in namespaces:
            if key in namespace:
                return True, namespace[key]
        return False, None

    captured: dict[str, Any] = {}
    missing: list[str] = []
    seen: set[int] = set()
    # A class brings all its methods: each reads globals that must travel with it.
    pending = list(root) if isinstance(root, list) else [root]
    while pending:
        function = pending.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        read, written = _global_names(function.__code__)
        for key in sorted(read | written):
            # __name__ and __builtins__ are the function's own module globals, never the notebook's.
            if key in captured or key in missing or key in _NOT_CAPTURED:
                continue
            if key == name:
                # Its own name: the function itself, which no value can hold (its payload would contain itself).
                captured[key] = Callee(name)
                continue
            found, value = lookup(key)
            if not found:
                # A name the function assigns through `global` may exist by the time it is read.
                if key not in written and not hasattr(builtins, key):
                    missing.append(key)
                continue
            captured[key] = value
            pending.extend(f for f in _functions_of(value) if shares_globals(f))
    if missing:
        raise DefinitionError(f"{name} uses undefined names: {', '.join(sorted(missing))}")
    return captured


def _is_immutable(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(value, (*_IMMUTABLE_ATOMS, Callee)) or hasattr(type(value), "__faas_callee__") or value is Ellipsis:
        return True
    if isinstance(value, tuple | frozenset):
        return all(_is_immutable(item, depth + 1) for item in value)
    return False


def reusable(function: types.FunctionType, captured: Mapping[str, Any]) -> bool:
    """True when nothing a call could mutate is reachable: then a loaded copy may serve many calls."""
    defaults = list(function.__defaults__ or ()) + list((function.__kwdefaults__ or {}).values())
    cells = [cell.cell_contents for cell in function.__closure__ or ()]
    return all(_is_immutable(v) for v in [*captured.values(), *defaults, *cells])


# Never shipped by value, even when not installed as packages: the worker has its own (or needs none).
_NEVER_SHIPPED = frozenset(
    {"jupyter_faas", "IPython", "ipykernel", "ipywidgets", "jupyter_client", "jupyter_core", "jupyter_server",
     "jupyterlab", "notebook", "traitlets", "__main__", CELL_MODULE}
)  # fmt: skip


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    """Where installed code lives: the standard library and every site-packages folder."""
    roots = {path for key in ("stdlib", "platstdlib", "purelib", "platlib") if (path := sysconfig.get_path(key))}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def local_modules(values: Iterable[Any]) -> list[types.ModuleType]:
    """The modules behind `values` that are not installed packages: a helpers.py beside the notebook, or a
    package folder in the working directory. Each comes as its top-level module."""
    found: dict[str, types.ModuleType] = {}
    for value in values:
        module_name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if not isinstance(module_name, str):
            module_name = type(value).__module__
        top = sys.modules.get(module_name.split(".")[0])
        path = getattr(top, "__file__", None)
        if top is None or not path or top.__name__ in _NEVER_SHIPPED or top.__name__ in found:
            continue
        if not os.path.realpath(path).startswith(_installed_roots()):
            found[top.__name__] = top
    return list(found.values())


def serialize(name: str, function: types.FunctionType, captured: Mapping[str, Any]) -> bytes:
    limit = _config.capture_max_bytes()
    # Local modules travel by value, so a worker without the file can run the function.
    shipped = [
        m for m in local_modules(captured.values()) if m.__name__ not in cloudpickle.list_registry_pickle_by_value()
    ]
    for module in shipped:
        cloudpickle.register_pickle_by_value(module)
    try:
        return _dumps(name, function, captured, limit)
    finally:
        for module in shipped:
            cloudpickle.unregister_pickle_by_value(module)


class _TooBig(Exception):
    """Raised from inside the pickler as soon as the output passes the limit, before it is all built."""


class _Bounded:
    """A pickler's file that keeps at most `limit` bytes; with keep=False it only counts them."""

    def __init__(self, limit: float, keep: bool = True) -> None:
        self.limit, self.keep, self.size = limit, keep, 0
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.size += size
        if self.size > self.limit:
            raise _TooBig
        if self.keep:
            self.parts.append(bytes(data))
        return size


def _as_callee(value: Any) -> Callee | None:
    """A jupyter-faas function (anything whose type says how) as a payload ships it; None for anything else."""
    make = getattr(type(value), "__faas_callee__", None)
    return make(value) if make is not None else None


class _PayloadPickler(cloudpickle.CloudPickler):  # type: ignore[misc]  # cloudpickle has no type information
    """cloudpickle, except that a jupyter-faas function a payload names travels as a Callee."""

    def reducer_override(self, obj: Any) -> Any:
        callee = _as_callee(obj) if not isinstance(obj, type) else None
        if callee is not None:
            return callee.__reduce__()
        return super().reducer_override(obj)


def _pickle(value: Any, limit: float, keep: bool = True) -> _Bounded:
    target = _Bounded(limit, keep)
    _PayloadPickler(target, protocol=5).dump(value)
    return target


def _pickled_size(value: Any) -> int | None:
    """How big `value` is pickled, counted without keeping the bytes; None if it cannot be pickled."""
    try:
        return _pickle(value, math.inf, keep=False).size
    except Exception:
        return None


def _too_big(name: str, captured: Mapping[str, Any], limit: int) -> DefinitionError:
    sizes = sorted(
        ((size, key) for key, value in captured.items() if (size := _pickled_size(value)) is not None),
        reverse=True,
    )
    setting = f"faas.capture.max-bytes is {format_size(limit)}"
    advice = "Save it to a file and pass the path as an argument, or load it inside the function"
    over = [(size, key) for size, key in sizes if size > limit]
    if over:
        named = ", ".join(f"{key} ({type(captured[key]).__name__}, {format_size(size)})" for size, key in over)
        return DefinitionError(f"{name} captures {named}: too big to send with the function ({setting}). {advice}.")
    largest = ", ".join(f"{key} ({format_size(size)})" for size, key in sizes[:3])
    return DefinitionError(
        f"{name} is too big to send to a worker once serialized with what it captures ({setting}); "
        f"the largest captures: {largest or 'none'}. {advice}."
    )


def _dumps(name: str, function: types.FunctionType, captured: Mapping[str, Any], limit: int) -> bytes:
    try:
        return b"".join(_pickle(function, limit).parts)
    except _TooBig:
        raise _too_big(name, captured, limit) from None
    except Exception as whole_error:
        culprits = []
        for key, value in captured.items():
            try:
                cloudpickle.dumps(value, protocol=5)
            except Exception as e:
                culprits.append(f"{key} ({type(value).__name__}: {e})")
        if culprits:
            raise DefinitionError(
                f"{name} captures values that cannot be sent to a worker: {'; '.join(culprits)}. "
                "Pass them as arguments, or create them inside the function."
            ) from None
        raise DefinitionError(f"{name} cannot be serialized for a worker: {whole_error}") from None
