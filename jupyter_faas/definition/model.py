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
    payload = serialize(name, final, captured)
    return FunctionDefinition(
        name=name,
        version=hashlib.sha256(payload).hexdigest(),
        payload=payload,
        filename=filename,
        source=source,
        signature=inspect.signature(final),
        limits=limits,
        reusable=reusable(final, captured),
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
    captured = capture(bound_name, function, [fn_globals, namespace], lambda f: f.__globals__ is fn_globals)
    # Keep only what the function reaches, so unrelated cell names do not travel.
    fn_globals.clear()
    fn_globals.update({"__name__": CELL_MODULE, "__builtins__": builtins})
    return _finish(bound_name, function, fn_globals, captured, filename, source, limits)
