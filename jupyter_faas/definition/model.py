"""Turning a cell or a def into an immutable, content-hashed function definition."""

from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import keyword
import linecache
import types
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle

from jupyter_faas.definition import kinds as _kinds
from jupyter_faas.definition.capture import CELL_MODULE, capture, reusable, serialize

# Imported from here by tests; it lives with the capture.
from jupyter_faas.definition.capture import local_modules as local_modules
from jupyter_faas.definition.limits import Limits
from jupyter_faas.errors import DefinitionError
from jupyter_faas.worker.code import with_filename


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
    # How it answers: "def", "async", "generator" or "async_generator" (of __call__, for a class).
    kind: str = "def"
    # A class with a warm instance: setup() once per sandbox and version, then __call__ per invocation.
    warm_class: bool = False

    @property
    def streams(self) -> bool:
        """Whether a call answers with a stream of items (a generator) rather than one value."""
        return self.kind in _kinds.STREAMING

    @property
    def short_version(self) -> str:
        return self.version[:8]

    def load(self) -> Callable[..., Any]:
        """A fresh copy of the function, with globals no other call has touched (a class: the class itself)."""
        loaded = cloudpickle.loads(self.payload)
        if isinstance(loaded, type):
            return loaded
        function: types.FunctionType = loaded
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


def _finish(
    name: str,
    function: types.FunctionType | type,
    fn_globals: dict[str, Any],
    captured: dict[str, Any],
    filename: str,
    source: str,
    limits: Limits,
) -> FunctionDefinition:
    fn_globals.update(captured)
    final: Any
    if isinstance(function, type):
        # A warm class: its __call__ is the function, and every method must be reusable for it to be.
        kind = _kinds.kind_of(_kinds.call_method(function, name))
        _kinds.check_inputs(name, kind, limits)
        final = _kinds.rebind(function, fn_globals, name)
        signature = _kinds.call_signature(final)
        is_reusable = all(reusable(method, captured) for method in _kinds.methods(final))
    else:
        kind = _kinds.kind_of(function)
        _kinds.check_inputs(name, kind, limits)
        final = types.FunctionType(
            function.__code__, fn_globals, function.__name__, function.__defaults__, function.__closure__
        )
        final.__kwdefaults__ = function.__kwdefaults__
        final.__annotations__ = dict(function.__annotations__)
        final.__doc__ = function.__doc__
        final.__qualname__ = name
        signature = inspect.signature(final)
        is_reusable = reusable(final, captured)
    # cloudpickle takes a class as well as a function.
    payload = serialize(name, final, captured)
    return FunctionDefinition(
        name=name,
        version=hashlib.sha256(payload).hexdigest(),
        payload=payload,
        filename=filename,
        source=source,
        signature=signature,
        limits=limits,
        reusable=is_reusable,
        captured=tuple(sorted(captured)),
        kind=kind,
        warm_class=isinstance(function, type),
    )


# -- from a decorated def ----------------------------------------------------------------------------


def from_callable(function: Callable[..., Any], limits: Limits, name: str | None = None) -> FunctionDefinition:
    """A definition from a def (plain, async or a generator), or a class with __call__: free names are captured now."""
    if isinstance(function, type):
        return _from_class(function, limits, name)
    if not isinstance(function, types.FunctionType):
        raise TypeError(f"function() takes a def or a class, got {type(function).__name__}")
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
    captured = capture(name, function, [module_globals], lambda f: f.__globals__ is module_globals)
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


def _from_class(cls: type, limits: Limits, name: str | None) -> FunctionDefinition:
    name = check_name(name or cls.__name__)
    _kinds.call_method(cls, name)
    own = _kinds.methods(cls)
    module_globals = own[0].__globals__ if own else {}
    captured = capture(name, own, [module_globals], lambda f: f.__globals__ is module_globals)
    try:
        lines, first = inspect.getsourcelines(cls)
        source = "\n" * (first - 1) + "".join(lines)
        filename = inspect.getsourcefile(cls) or "<class>"
    except (OSError, TypeError):
        source, filename = "", own[0].__code__.co_filename if own else "<class>"
    fn_globals = {"__name__": cls.__module__, "__builtins__": builtins}
    return _finish(name, cls, fn_globals, captured, filename, source, limits)


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


def _top_level_defs(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """The cell's functions, and its classes with a __call__ (a warm class is bound like a function)."""
    return [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        or (
            isinstance(node, ast.ClassDef)
            and any(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == "__call__"
                for item in node.body
            )
        )
    ]


_AWAITS = (ast.Await, ast.AsyncFor, ast.AsyncWith)
_YIELDS = (ast.Yield, ast.YieldFrom)


def _contains(body: list[ast.stmt], kinds: tuple[type[ast.AST], ...]) -> bool:
    """Whether the statements hold such a node outside any def they contain (`await`: an async body)."""
    pending: list[ast.AST] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, kinds):
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        pending.extend(ast.iter_child_nodes(node))
    return False


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
    chosen: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | None = None
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
    bound_name = check_name(name or chosen.name)  # type: ignore[union-attr]
    filename = cell_filename(bound_name)
    source = f"%%faas {magic_line}".rstrip() + "\n" + cell
    # Line 1 of the cell is the magic line, so the cell's own code starts at line 2.
    ast.increment_lineno(tree, 1)

    if chosen is None:
        arguments = _split_params(params or [], bound_name)
        body = tree.body or [ast.Pass()]
        last = body[-1]
        # A generator's items are what it yields: its last expression is not also a return value.
        if isinstance(last, ast.Expr) and not _contains(body, _YIELDS):
            body[-1] = ast.copy_location(ast.Return(value=last.value), last)
        # A body that awaits is an async function's; one that yields, a generator's (Python sees that itself).
        maker = ast.AsyncFunctionDef if _contains(body, _AWAITS) else ast.FunctionDef
        function_node = maker(
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
    if isinstance(function, type):
        _kinds.call_method(function, bound_name)
    elif not isinstance(function, types.FunctionType):
        raise DefinitionError(f"%%faas: {target} is not a function after running the cell")
    # The cell's own names become globals of the function and of the helpers it defines.
    fn_globals.update(dict(cell_locals))
    roots = _kinds.methods(function) if isinstance(function, type) else function
    captured = capture(bound_name, roots, [fn_globals, namespace], lambda f: f.__globals__ is fn_globals)
    # Keep only what the function reaches, so unrelated cell names do not travel.
    fn_globals.clear()
    fn_globals.update({"__name__": CELL_MODULE, "__builtins__": builtins})
    return _finish(bound_name, function, fn_globals, captured, filename, source, limits)
