"""A function's definition as a readable Python module: its cell as code, what it captured as data beside it."""

from __future__ import annotations

import ast
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from jupyter_faas.definition import kinds
from jupyter_faas.definition.capture import CELL_MODULE, capture, local_modules
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.errors import DefinitionError

# Names the generated module uses for itself: prefixed, so they never shadow a name of the user's code.
_PRELUDE_JSON = "import json as _faas_json"
_PRELUDE_PICKLE = "import pickle as _faas_pickle"
_PRELUDE_PATH = "from pathlib import Path as _FaasPath"


@dataclass(frozen=True)
class Capture:
    """One value the function took from the notebook, and how the export carries it."""

    name: str
    how: str  # "json", "pickle", "import", "source" or "not exported"
    size: int  # bytes in its data file; 0 when it travels as code
    detail: str


@dataclass
class Module:
    """The generated module of one function, with its data files' contents."""

    name: str
    text: str = ""
    json_values: dict[str, Any] = field(default_factory=dict)
    pickled_values: dict[str, Any] = field(default_factory=dict)
    captures: list[Capture] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def json_file(self) -> str:
        return f"{self.name}.captures.json"

    @property
    def pickle_file(self) -> str:
        return f"{self.name}.captures.pickle"

    def data_files(self) -> dict[str, bytes]:
        files = {}
        if self.json_values:
            files[self.json_file] = json.dumps(self.json_values, indent=1, allow_nan=False).encode()
        if self.pickled_values:
            files[self.pickle_file] = cloudpickle.dumps(self.pickled_values, protocol=5)
        return files


class _Raw:
    """Shows as the given text in an inspect.Signature: a default written as code, not as its repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _json_value(value: Any) -> bool:
    """True when JSON gives back exactly this value, of exactly these types (no tuples, no NaN)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return _same(json.loads(text), value)


def _same(decoded: Any, value: Any) -> bool:
    if type(decoded) is not type(value):
        return False
    if isinstance(value, list):
        return len(value) == len(decoded) and all(_same(a, b) for a, b in zip(decoded, value, strict=True))
    if isinstance(value, dict):
        return list(value) == list(decoded) and all(_same(decoded[k], value[k]) for k in value)
    return bool(decoded == value)


def _bound_at_top(tree: ast.Module) -> set[str]:
    """The names a cell's top-level statements bind: its imports, assignments, defs and classes."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        else:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
    return names


def _has_multiline_strings(code: str) -> bool:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return True
    return any(token.type == tokenize.STRING and token.start[0] != token.end[0] for token in tokens)


def _header(name: str, signature: inspect.Signature, module: Module) -> str:
    """`def name(...)`, the parameters as the magic line gave them; a default code cannot spell comes as data."""
    parameters = []
    for parameter in signature.parameters.values():
        default = parameter.default
        if default is not inspect.Parameter.empty:
            text = repr(default)
            try:
                literal_ok = ast.literal_eval(text) == default and type(ast.literal_eval(text)) is type(default)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                literal_ok = False
            if not literal_ok:
                key = f"_default_{parameter.name}"
                _carry(module, key, default, f"the default of parameter {parameter.name!r}")
                text = key
            parameter = parameter.replace(default=_Raw(text))
        parameters.append(parameter)
    return f"def {name}{signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)}:"


def _form_one(name: str, cell: str, signature: inspect.Signature, module: Module) -> str:
    """A form 1 cell (the cell is the body): a def with the magic line's parameters, its last expression returned."""
    tree = ast.parse(cell)
    header = _header(name, signature, module)
    if not tree.body:
        return f"{header}\n    return None\n"
    if _has_multiline_strings(cell):
        # Indenting a multi-line string would change its text: rebuild the body from the syntax tree instead.
        last = tree.body[-1]
        if isinstance(last, ast.Expr):
            tree.body[-1] = ast.copy_location(ast.Return(value=last.value), last)
        body = textwrap.indent(ast.unparse(tree), "    ")
        return f"{header}\n{body}\n"
    lines = cell.splitlines()
    last = tree.body[-1]
    if isinstance(last, ast.Expr):
        row = last.lineno - 1
        line = lines[row]
        lines[row] = line[: last.col_offset] + "return " + line[last.col_offset :]
    body = "\n".join(("    " + line) if line.strip() else "" for line in lines)
    return f"{header}\n{body.rstrip()}\n"


def _is_exported_function(value: Any) -> bool:
    # A jupyter-faas object: a function (or the stand-in a definition keeps for one it calls), or anything else of
    # the package's, which an export cannot carry since it runs without jupyter-faas.
    if isinstance(getattr(value, "_definition", None), FunctionDefinition):
        return True
    return type(value).__module__.split(".")[0] == "jupyter_faas"


def _carry(module: Module, name: str, value: Any, what: str) -> None:
    """A value as data: JSON when it fits, otherwise a cloudpickle file; or a warning naming it."""
    if _json_value(value):
        size = len(json.dumps(value, allow_nan=False).encode())
        module.json_values[name] = value
        module.captures.append(Capture(name, "json", size, f"{type(value).__name__}, {what}"))
        return
    try:
        size = len(cloudpickle.dumps(value, protocol=5))
    except Exception as e:
        module.captures.append(Capture(name, "not exported", 0, f"{type(value).__name__} ({e})"))
        module.warnings.append(
            f"{module.name}: {what} {name!r} ({type(value).__name__}) cannot be exported: {e}; "
            "create it inside the function instead"
        )
        return
    module.pickled_values[name] = value
    module.captures.append(Capture(name, "pickle", size, f"{type(value).__name__}, {what}"))


def _import_line(name: str, value: Any) -> str | None:
    """The import that binds `name` to `value` when `value` is a module or a name of an installed module."""
    if isinstance(value, types.ModuleType):
        if value in local_modules([value]):
            return None
        return f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}"
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or "." in qualname or "<" in qualname:
        return None
    if module_name in ("__main__", CELL_MODULE, "builtins") or module_name not in sys.modules:
        return None
    if getattr(sys.modules[module_name], qualname, None) is not value or local_modules([value]):
        return None
    return f"from {module_name} import {qualname}" + ("" if qualname == name else f" as {name}")


def _same_code(live: Any, value: Any) -> bool:
    """The notebook's own object is the one captured: the same bytecode, or the same class name."""
    if isinstance(live, types.FunctionType) and isinstance(value, types.FunctionType):
        return live.__code__.co_code == value.__code__.co_code and live.__code__.co_consts == value.__code__.co_consts
    return isinstance(live, type) and isinstance(value, type) and live.__qualname__ == value.__qualname__


def _notebook_source(value: Any, live: Any) -> str | None:
    """The source of a def or class written in the notebook, if Python can still find it. A captured copy has
    lost its cell's file name: the source is read through the notebook's own object of that name."""
    if not isinstance(value, types.FunctionType | type) or getattr(value, "__module__", None) not in ("__main__",):
        return None
    try:
        source = textwrap.dedent(inspect.getsource(live if _same_code(live, value) else value))
        ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    return source


class _Collector:
    """Walks what a function captured, deciding for each name: an import, source code, or data."""

    def __init__(self, module: Module, namespace: Mapping[str, Any]) -> None:
        self.module = module
        self.namespace = namespace
        self.imports: list[str] = []
        self.helpers: list[str] = []
        self.done: set[str] = set()

    def add(self, name: str, value: Any) -> None:
        if name in self.done:
            return
        self.done.add(name)
        module = self.module
        if _is_exported_function(value):
            module.captures.append(Capture(name, "not exported", 0, "a jupyter-faas function or object"))
            module.warnings.append(
                f"{module.name}: it uses the jupyter-faas function or object {name!r}, which an export cannot carry: "
                "export that function too and call it over HTTP, or pass its result as an argument"
            )
            return
        line = _import_line(name, value)
        if line is not None:
            self.imports.append(line)
            module.captures.append(Capture(name, "import", 0, line))
            return
        if isinstance(value, types.ModuleType):
            module.captures.append(Capture(name, "not exported", 0, f"local module {value.__name__}"))
            module.warnings.append(
                f"{module.name}: it uses the local module {value.__name__!r} (not an installed package), "
                "which is not copied: add it to the export by hand or install it as a package"
            )
            return
        source = _notebook_source(value, self.namespace.get(name))
        if source is not None:
            self.helpers.append(source)
            module.captures.append(Capture(name, "source", 0, f"{type(value).__name__} written in the notebook"))
            if isinstance(value, types.FunctionType):
                self.follow(value)
            return
        _carry(module, name, value, "captured from the notebook")

    def follow(self, helper: types.FunctionType) -> None:
        """The globals a notebook helper reads come along too."""
        try:
            found = capture(helper.__name__, helper, [helper.__globals__], lambda _: False)
        except DefinitionError as e:
            self.module.warnings.append(f"{self.module.name}: helper {helper.__name__}: {e}")
            return
        for name, value in found.items():
            self.add(name, value)


def generate(definition: FunctionDefinition, namespace: Mapping[str, Any] | None = None) -> Module:
    """The function as a module: imports, captured data, helpers written in the notebook, then the function.

    `namespace` is the notebook's, where the source of its defs and classes can still be found.
    """
    name = definition.name
    module = Module(name)
    function = definition.load()
    # A warm class's methods share one globals dict: what it captured.
    methods = kinds.methods(function) if isinstance(function, type) else [function]
    fn_globals: dict[str, Any] = methods[0].__globals__ if methods else {}
    values = {key: fn_globals[key] for key in definition.captured if key in fn_globals}
    source = definition.source
    code_text: str
    own_names: set[str] = set()
    if source.startswith("%%faas"):
        cell = source.split("\n", 1)[1] if "\n" in source else ""
        tree = ast.parse(cell)
        # The magic puts a form 1 function's def on line 1, the magic line; a def written in the cell is below it.
        if not isinstance(function, type) and function.__code__.co_firstlineno == 1:
            code_text = _form_one(name, cell, definition.signature, module)
            if definition.kind in ("async", "async_generator"):
                code_text = "async " + code_text
        else:
            own_names = _bound_at_top(tree)
            code_text = cell.rstrip() + "\n"
            if function.__name__ != name:
                code_text += f"\n{name} = {function.__name__}\n"
    elif source.strip():
        tree = ast.parse(textwrap.dedent(source.lstrip("\n")))
        defined = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        defs = [n for n in tree.body if isinstance(n, defined) and n.name == function.__name__]
        if not defs:
            raise DefinitionError(f"{name}: its source does not define {function.__name__}")
        lines = textwrap.dedent(source.lstrip("\n")).splitlines()
        # The def alone, without the decorator that made it a jupyter-faas function.
        code_text = "\n".join(lines[defs[0].lineno - 1 : defs[0].end_lineno]) + "\n"
        if function.__name__ != name:
            code_text += f"\n{name} = {function.__name__}\n"
    else:
        module.warnings.append(f"{name}: its source is not known, so the function itself is exported as a pickle")
        _carry(module, name, function, "the function itself (its source is not known)")
        code_text = ""
    collector = _Collector(module, namespace or {})
    for key in sorted(values):
        if key not in own_names:
            collector.add(key, values[key])
    # A def's closure variables become the module's globals: at module level the def reads them from there.
    for method in methods:
        for variable, closure_cell in zip(method.__code__.co_freevars, method.__closure__ or (), strict=True):
            # Zero-argument super()'s __class__ cell is the class itself, defined again by its source.
            if variable != "__class__":
                collector.add(variable, closure_cell.cell_contents)
    module.text = _assemble(module, collector, code_text, definition)
    return module


def _assemble(module: Module, collector: _Collector, code_text: str, definition: FunctionDefinition) -> str:
    parts = [f'"""{definition.name}, exported from a jupyter-faas notebook (version {definition.short_version})."""\n']
    if collector.imports:
        parts.append("\n".join(dict.fromkeys(collector.imports)) + "\n")
    if module.json_values or module.pickled_values:
        prelude = [_PRELUDE_JSON] if module.json_values else []
        prelude += [_PRELUDE_PICKLE] if module.pickled_values else []
        parts.append("\n".join([*prelude, _PRELUDE_PATH]) + "\n")
    if module.json_values:
        names = "\n".join(f"{key} = _CAPTURED[{key!r}]" for key in module.json_values)
        parts.append(
            "# Values captured from the notebook, as JSON beside this file.\n"
            f"_CAPTURED = _faas_json.loads(_FaasPath(__file__).with_name({module.json_file!r}).read_text('utf-8'))\n"
            f"{names}\n"
        )
    if module.pickled_values:
        names = "\n".join(f"{key} = _PICKLED[{key!r}]" for key in module.pickled_values)
        parts.append(
            "# Values JSON cannot carry, pickled with cloudpickle (they load only under the same Python minor "
            "version).\n"
            f"with _FaasPath(__file__).with_name({module.pickle_file!r}).open('rb') as _file:\n"
            "    _PICKLED = _faas_pickle.load(_file)\n"
            f"{names}\n"
        )
    parts.extend(collector.helpers)
    if code_text:
        parts.append(code_text)
    text = "\n\n".join(part.rstrip("\n") for part in parts) + "\n"
    ast.parse(text)  # a generated module that does not parse is our bug: fail here, not on the platform
    return text
