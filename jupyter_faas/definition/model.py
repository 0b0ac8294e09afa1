"""Turning a cell or a def into an immutable, content-hashed function definition."""

from __future__ import annotations

import ast
import builtins
import dis
import functools
import hashlib
import inspect
import keyword
import linecache
import math
import os
import site
import sys
import sysconfig
import types
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.definition.limits import Limits
from jupyter_faas.errors import DefinitionError
from jupyter_faas.units import format_size
from jupyter_faas.worker.code import with_filename

# Module name given to cell-defined code, so that cloudpickle always ships it by value.
CELL_MODULE = "__faas__"

_IMMUTABLE_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, types.ModuleType)


@dataclass(frozen=True)
class FunctionDefinition:
    """Everything a worker needs to run one version of a function, serialized once."""

    name: str
    version: str
    payload: bytes
    filename: str
    source: str
    signature: inspect.Signature
    limits: Limits
    reusable: bool
    captured: tuple[str, ...]
    # Packages it declares it needs (pip requirement strings).
    requirements: tuple[str, ...] = ()
    # Environment variables it gets from the platform's environment at each call: names only, never values.
    secrets: tuple[str, ...] = ()

    @property
    def short_version(self) -> str:
        return self.version[:8]

    def load(self) -> Callable[..., Any]:
        """A fresh copy of the function, with globals no other call has touched."""
        function: types.FunctionType = cloudpickle.loads(self.payload)
        function.__code__ = with_filename(function.__code__, self.filename)
        return function

    def describe_signature(self) -> str:
        return f"{self.name}{self.signature}"


def check_name(name: str) -> str:
    """The name as Python reads it (NFKC); refuses what cannot, or must not, be bound in a notebook."""
    normalized = unicodedata.normalize("NFKC", name)
    if not normalized.isidentifier():
        raise DefinitionError(f"{name!r} is not a valid function name")
    if keyword.iskeyword(normalized):
        raise DefinitionError(f"{name!r} is a Python keyword; choose another function name")
    if normalized.startswith("__") and normalized.endswith("__"):
        # Binding __builtins__ and its kind in the notebook would break every later cell.
        raise DefinitionError(f"{name!r}: names like __x__ belong to Python; choose another function name")
    return normalized


def register_source(filename: str, source: str) -> None:
    """Make tracebacks through `filename` show these source lines."""
    lines = source.splitlines(keepends=True)
    # An mtime of None keeps the entry through linecache.checkcache().
    linecache.cache[filename] = (len(source), None, lines, filename)


def cell_filename(name: str) -> str:
    return f"<faas-cell {name}>"


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


def _capture(
    name: str,
    root: types.FunctionType,
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
    pending = [root]
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
    if isinstance(value, _IMMUTABLE_ATOMS) or value is Ellipsis:
        return True
    if isinstance(value, tuple | frozenset):
        return all(_is_immutable(item, depth + 1) for item in value)
    return False


def _reusable(function: types.FunctionType, captured: Mapping[str, Any]) -> bool:
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


def _serialize(name: str, function: types.FunctionType, captured: Mapping[str, Any]) -> bytes:
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


def _pickle(value: Any, limit: float, keep: bool = True) -> _Bounded:
    target = _Bounded(limit, keep)
    cloudpickle.CloudPickler(target, protocol=5).dump(value)
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


def _finish(
    name: str,
    function: types.FunctionType,
    fn_globals: dict[str, Any],
    captured: dict[str, Any],
    filename: str,
    source: str,
    limits: Limits,
) -> FunctionDefinition:
    fn_globals.update(captured)
    final = types.FunctionType(
        function.__code__, fn_globals, function.__name__, function.__defaults__, function.__closure__
    )
    final.__kwdefaults__ = function.__kwdefaults__
    final.__annotations__ = dict(function.__annotations__)
    final.__doc__ = function.__doc__
    final.__qualname__ = name
    payload = _serialize(name, final, captured)
    return FunctionDefinition(
        name=name,
        version=hashlib.sha256(payload).hexdigest(),
        payload=payload,
        filename=filename,
        source=source,
        signature=inspect.signature(final),
        limits=limits,
        reusable=_reusable(final, captured),
        captured=tuple(sorted(captured)),
    )


# -- from a decorated def ----------------------------------------------------------------------------


def from_callable(function: Callable[..., Any], limits: Limits, name: str | None = None) -> FunctionDefinition:
    """A definition from a plain def: its free names are captured by value now."""
    if not isinstance(function, types.FunctionType):
        raise TypeError(f"function() takes a def, got {type(function).__name__}")
    if inspect.iscoroutinefunction(function) or inspect.isgeneratorfunction(function):
        raise TypeError(f"{function.__name__} must be a plain def: async and generator functions are not supported")
    if name is None and function.__name__ == "<lambda>":
        raise DefinitionError("a lambda needs a name: function(name='double')(lambda x: 2 * x)")
    name = check_name(name or function.__name__)
    for variable, cell in zip(function.__code__.co_freevars, function.__closure__ or (), strict=True):
        try:
            cell.cell_contents  # noqa: B018
        except ValueError:
            raise DefinitionError(
                f"{name} uses {variable}, which has no value yet where {name} is defined: "
                f"assign {variable} before the def, or pass it as an argument"
            ) from None
    module_globals = function.__globals__
    captured = _capture(name, function, [module_globals], lambda f: f.__globals__ is module_globals)
    filename = function.__code__.co_filename
    # The function's own lines, at their own line numbers, so a worker without the file can show them;
    # this process reads the file itself.
    try:
        lines, first = inspect.getsourcelines(function)
        source = "\n" * (first - 1) + "".join(lines)
    except (OSError, TypeError):
        source = ""
    fn_globals = {"__name__": function.__module__, "__builtins__": builtins}
    return _finish(name, function, fn_globals, captured, filename, source, limits)


# -- from a cell -------------------------------------------------------------------------------------


class _CellLocals(dict[str, Any]):
    """The cell's top-level namespace: its own names first, then the notebook's."""

    def __init__(self, fallback: Mapping[str, Any]) -> None:
        super().__init__()
        self._fallback = fallback

    def __missing__(self, key: str) -> Any:
        return self._fallback[key]


def _split_params(params: list[str], name: str) -> ast.arguments:
    text = ", ".join(params)
    try:
        tree = ast.parse(f"def _({text}): pass")
        arguments: ast.arguments = tree.body[0].args  # type: ignore[attr-defined]
    except SyntaxError:
        raise DefinitionError(
            f"%%faas {name}: cannot read the parameters {' '.join(params)!r}; "
            "write them as in a def, one per token: text min_len=1 x:int"
        ) from None
    return arguments


def _top_level_defs(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def _only_environment(tree: ast.Module, chosen: ast.AST) -> bool:
    """True when every other top-level statement is an import, an assignment, a def, a class or a docstring."""
    allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.ClassDef)
    for node in tree.body:
        if node is chosen or isinstance(node, allowed):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


def from_cell(
    cell: str,
    namespace: Mapping[str, Any],
    limits: Limits,
    name: str | None = None,
    params: list[str] | None = None,
    magic_line: str = "",
) -> FunctionDefinition:
    """A definition from a %%faas cell, in either form.

    Form 1 (a name, maybe parameters): the cell is the body, its last expression the return value.
    Form 2: the cell defines one top-level function; `name` picks one of several, or renames the only one.
    """
    try:
        tree = ast.parse(cell)
    except SyntaxError as e:
        # IPython shows a SyntaxError with the offending line; shift it to the cell's numbering.
        if e.lineno is not None:
            e.lineno += 1
        raise
    defs = _top_level_defs(tree)
    by_name = {d.name: d for d in defs}
    chosen: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    if params is None or not params:
        if name is not None and name in by_name:
            chosen = by_name[name]
        elif len(defs) == 1 and (name is None or _only_environment(tree, defs[0])):
            chosen = defs[0]
    if chosen is None and name is None:
        if not defs:
            raise DefinitionError(
                "%%faas needs a function: name one to make the cell its body (%%faas NAME [params]), "
                "or define one function in the cell"
            )
        listed = ", ".join(d.name for d in defs)
        raise DefinitionError(
            f"the cell defines {len(defs)} functions ({listed}); name the one to run, e.g. %%faas {defs[0].name}"
        )
    if isinstance(chosen, ast.AsyncFunctionDef):
        raise DefinitionError(f"{chosen.name} is async; %%faas runs plain def functions")

    bound_name = check_name(name or chosen.name)  # type: ignore[union-attr]
    filename = cell_filename(bound_name)
    source = f"%%faas {magic_line}".rstrip() + "\n" + cell
    # Line 1 of the cell is the magic line, so the cell's own code starts at line 2.
    ast.increment_lineno(tree, 1)

    if chosen is None:
        arguments = _split_params(params or [], bound_name)
        body = tree.body or [ast.Pass()]
        last = body[-1]
        if isinstance(last, ast.Expr):
            body[-1] = ast.copy_location(ast.Return(value=last.value), last)
        function_node = ast.FunctionDef(
            name=bound_name, args=arguments, body=body, decorator_list=[], returns=None, type_params=[]
        )  # type: ignore[call-arg, unused-ignore]  # type_params: a field from 3.12 on
        ast.copy_location(function_node, body[0])
        function_node.lineno = 1
        tree = ast.Module(body=[function_node], type_ignores=[])
        ast.fix_missing_locations(tree)
        target = bound_name
    else:
        target = chosen.name

    fn_globals: dict[str, Any] = {"__name__": CELL_MODULE, "__builtins__": builtins}
    cell_locals = _CellLocals(namespace)
    try:
        # dont_inherit: this module's `from __future__ import annotations` must not change the user's code.
        code = compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise DefinitionError(f"{bound_name}: {e.msg} (cell line {e.lineno})") from None
    # Before exec, so errors in the cell's own top-level code show its lines too.
    register_source(filename, source)
    exec(code, fn_globals, cell_locals)
    function = dict.get(cell_locals, target)
    if not isinstance(function, types.FunctionType):
        raise DefinitionError(f"%%faas: {target} is not a function after running the cell")
    # The cell's own names become globals of the function and of the helpers it defines.
    fn_globals.update(dict(cell_locals))
    captured = _capture(bound_name, function, [fn_globals, namespace], lambda f: f.__globals__ is fn_globals)
    # Keep only what the function reaches, so unrelated cell names do not travel.
    fn_globals.clear()
    fn_globals.update({"__name__": CELL_MODULE, "__builtins__": builtins})
    return _finish(bound_name, function, fn_globals, captured, filename, source, limits)
