"""Cells for the runtimes other than the sandbox's Python: JavaScript, bash, and Python built into WebAssembly."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle

from jupyter_faas import config as _config
from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import (
    FunctionDefinition,
    _only_environment,
    _top_level_defs,
    cell_filename,
    check_name,
    from_cell,
)
from jupyter_faas.errors import DefinitionError
from jupyter_faas.worker import runtimes as _runtimes
from jupyter_faas.worker.runtimes import bash as _bash
from jupyter_faas.worker.runtimes import node as _node
from jupyter_faas.worker.runtimes import wasm as _wasm

# --lang values.
LANGUAGES = ("python", "javascript", "bash")
# Standard-library modules that import but cannot work in WebAssembly (WASI has no processes, sockets,
# signals or threads), or that do not exist there at all.
WASM_UNSUPPORTED = frozenset(
    {"socket", "ssl", "subprocess", "multiprocessing", "concurrent", "threading", "_thread", "asyncio", "select",
     "selectors", "signal", "mmap", "ctypes", "fcntl", "termios", "tty", "pty", "resource", "grp", "pwd",
     "readline", "curses", "tkinter", "turtle", "sqlite3", "dbm", "urllib", "http", "ftplib", "smtplib",
     "imaplib", "poplib", "socketserver", "xmlrpc", "webbrowser", "venv", "ensurepip", "idlelib", "lzma", "bz2"}
)  # fmt: skip
_T = TypeVar("_T")
# Reports what a slow step (the WebAssembly build) is doing; called about once a second.
Progress = Callable[[str], None]


def _no_progress(text: str) -> None:
    return None


# -- JavaScript and bash -------------------------------------------------------------------------------


def _stub_signature(name: str, params: list[str], lang: str) -> tuple[inspect.Signature, dict[str, Any]]:
    """The signature of a non-Python cell, and the JSON defaults of its parameters."""
    text = ", ".join(params)
    try:
        tree = ast.parse(f"def _({text}): pass")
    except SyntaxError:
        raise DefinitionError(
            f"%%faas {name}: cannot read the parameters {text!r}; write them one per token: name count=1"
        ) from None
    arguments: ast.arguments = tree.body[0].args  # type: ignore[attr-defined]
    if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or arguments.posonlyargs:
        raise DefinitionError(f"%%faas {name} --lang {lang}: parameters are plain names (no *, ** or /)")
    defaults: dict[str, Any] = {}
    plain = arguments.args
    for parameter, default in zip(plain[len(plain) - len(arguments.defaults) :], arguments.defaults, strict=True):
        try:
            value = ast.literal_eval(default)
            json.dumps(value, allow_nan=False)
        except (ValueError, TypeError, SyntaxError):
            raise DefinitionError(
                f"%%faas {name} --lang {lang}: the default of {parameter.arg} must be a JSON value "
                f"(a number, a string, true/false, null, a list or a dict), got {ast.unparse(default)}"
            ) from None
        defaults[parameter.arg] = value
    namespace: dict[str, Any] = {"__builtins__": builtins}
    try:
        exec(compile(tree, "<parameters>", "exec"), namespace)
    except Exception as e:
        raise DefinitionError(f"%%faas {name}: the parameters {text!r} do not evaluate: {e}") from None
    return inspect.signature(namespace["_"]), defaults


def _definition(
    program: _runtimes.Program, signature: inspect.Signature, limits: Limits, source: str, filename: str
) -> FunctionDefinition:
    payload = cloudpickle.dumps(_runtimes.entry(program), protocol=5)
    # A runtime keeps its own isolation (a fresh instance, a subshell); faas.defaults.isolation=fresh is for Python.
    limits = dataclasses.replace(limits, isolation="warm")
    return FunctionDefinition(
        name=program.name,
        version=hashlib.sha256(payload).hexdigest(),
        payload=payload,
        filename=filename,
        source=source,
        signature=signature,
        limits=limits,
        # The shipped function only hands its arguments to a runtime: nothing of it can be changed by a call.
        reusable=True,
        captured=(),
    )


def from_lang_cell(
    cell: str, lang: str, limits: Limits, name: str | None, params: list[str], magic_line: str = ""
) -> FunctionDefinition:
    """A definition from a JavaScript or bash cell: the cell is the body, the magic line names the parameters."""
    if lang not in ("javascript", "bash"):
        raise DefinitionError(f"--lang {lang}: expected one of {', '.join(LANGUAGES)}")
    if name is None:
        raise DefinitionError(f"%%faas --lang {lang} needs a name: %%faas NAME [params] --lang {lang}")
    bound = check_name(name)
    signature, defaults = _stub_signature(bound, params, lang)
    names = tuple(signature.parameters)
    source = f"%%faas {magic_line}".rstrip() + "\n" + cell
    filename = cell_filename(bound)
    program: _runtimes.Program
    if lang == "bash":
        for parameter in names:
            problem = _bash.check_parameter(parameter)
            if problem:
                raise DefinitionError(f"%%faas {bound} --lang bash: {problem}")
        program = _bash.BashProgram(
            name=bound, params=names, defaults=defaults, timeout=limits.timeout, memory=limits.memory, source=cell
        )
    else:
        program = _node.JavaScriptProgram(
            name=bound,
            params=names,
            defaults=defaults,
            timeout=limits.timeout,
            memory=limits.memory,
            source=cell,
            filename=filename,
        )
    return _definition(program, signature, limits, source, filename)


# -- Python in WebAssembly -----------------------------------------------------------------------------


def check_wasm_imports(name: str, tree: ast.AST) -> None:
    """Fail, in one line, on the first import that cannot run in WebAssembly."""
    refused: list[str] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = ["." * node.level + (node.module or "")]
        for module in modules:
            top = module.split(".")[0]
            if top and top in sys.stdlib_module_names and top not in WASM_UNSUPPORTED:
                continue
            if module not in refused:
                refused.append(module)
    if refused:
        what = ", ".join(refused)
        raise DefinitionError(
            f"{name} --runtime wasm: cannot import {what} in WebAssembly (only the standard library, without "
            "processes, sockets, threads or C extensions); run it with the default Python runtime"
        )


def _cell_spec(
    cell: str, namespace: Mapping[str, Any], definition: FunctionDefinition, params: list[str], name: str | None
) -> dict[str, Any]:
    """What the guest needs to rebuild the cell's function: the cell, its form, and the notebook values it reads."""
    tree = ast.parse(cell)
    defs = _top_level_defs(tree)
    by_name = {d.name: d for d in defs}
    chosen: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    if not params:
        if name is not None and name in by_name:
            chosen = by_name[name]
        elif len(defs) == 1 and (name is None or _only_environment(tree, defs[0])):
            chosen = defs[0]
    own: set[str] = set()
    if chosen is not None:
        for node in tree.body:
            for target in ast.walk(node):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    own.add(target.id)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                own.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    constants: dict[str, Any] = {}
    modules: dict[str, str] = {}
    for key in definition.captured:
        # A builtin the notebook shadows (IPython's own open) is the guest's builtin in WebAssembly.
        if key in own or key not in namespace or hasattr(builtins, key):
            continue
        value = namespace[key]
        if isinstance(value, types.ModuleType):
            check_wasm_imports(definition.name, ast.parse(f"import {value.__name__}"))
            modules[key] = value.__name__
            continue
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            text = None
        if text is None or json.loads(text) != value:
            raise DefinitionError(
                f"{definition.name} --runtime wasm reads {key} ({type(value).__name__}) from the notebook: a "
                "WebAssembly cell can take only modules and JSON values (numbers, strings, lists, dicts); "
                "define it in the cell or pass it as an argument"
            )
        constants[key] = value
    return {
        "name": definition.name,
        "target": definition.name if chosen is None else chosen.name,
        "form": "body" if chosen is None else "module",
        "params": ", ".join(params),
        "cell": cell,
        # The magic line, blank: options (--timeout...) change no line of the cell, nor the build.
        "source": "\n" + cell,
        "filename": definition.filename,
        "constants": constants,
        "modules": modules,
        "imports": sorted(_imported_modules(tree)),
    }


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module the cell imports: the guest imports them at build time, so the build bundles them."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def wasm_cache_dir() -> Path:
    """Where built components and their compiled forms are kept, by content hash."""
    return _config.private_dir(_config.wasm_cache_dir())


def _componentize_py() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    found = shutil.which("componentize-py") or shutil.which(beside)
    if found is None or not _wasm.available():
        # wasmtime too: the build compiles the component for it here, as the workers will load it.
        raise DefinitionError(
            f"--runtime wasm needs componentize-py and wasmtime (on the workers too): {_wasm.INSTALL}"
        )
    return found


def _guest_files() -> dict[str, str]:
    guest = Path(_wasm.GUEST_DIR)
    return {"app.py": (guest / "app.py.in").read_text(), "cell.wit": (guest / "cell.wit").read_text()}


def build_key(spec: dict[str, Any]) -> str:
    """The content hash a component is cached under: the cell, the guest, and the builder's version."""
    digest = hashlib.sha256()
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for name, text in sorted(_guest_files().items()):
        digest.update(name.encode() + b"\0" + text.encode())
    digest.update(metadata.version("componentize-py").encode())
    return digest.hexdigest()


def _with_progress(label: str, on_progress: Progress, work: Callable[[], _T]) -> _T:
    """Run `work`, telling `on_progress` what runs and for how long, about once a second."""
    began = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            on_progress(f"{label} ({time.monotonic() - began:.0f} s)")

    on_progress(label)
    ticker = threading.Thread(target=tick, name="faas-build-progress", daemon=True)
    ticker.start()
    try:
        return work()
    finally:
        done.set()
        ticker.join()


def _build_error(name: str, stderr: str) -> DefinitionError:
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "ModuleNotFoundError" in line or "ImportError" in line:
            return DefinitionError(f"{name} --runtime wasm: {line.strip()} (not available in WebAssembly)")
    for line in reversed(lines):
        if "Error" in line:
            return DefinitionError(f"{name} --runtime wasm: the build failed: {line.strip()}")
    tail = " / ".join(lines[-3:])
    return DefinitionError(f"{name} --runtime wasm: the build failed: {tail or 'no message'}")


def build_component(name: str, spec: dict[str, Any], on_progress: Progress = _no_progress) -> tuple[Path, Path, bool]:
    """(component, precompiled, built now): the cell's component, built once per content hash, and compiled."""
    _componentize_py()  # both tools are there, or one clear line says how to get them
    key = build_key(spec)
    folder = wasm_cache_dir()
    component = folder / f"{key}.wasm"
    precompiled = folder / f"{key}.wasmtime-{metadata.version('wasmtime')}.cwasm"
    built = False
    if not component.exists():
        built = True
        with tempfile.TemporaryDirectory(prefix="faas-wasm-build-") as work:
            files = _guest_files()
            Path(work, "app.py").write_text(files["app.py"])
            Path(work, "cell.wit").write_text(files["cell.wit"])
            Path(work, "faas_cell.py").write_text(f"import json\n\nCELL = json.loads({json.dumps(spec)!r})\n")
            output = Path(work, "cell.wasm")
            command = [_componentize_py(), "-d", "cell.wit", "-w", _wasm.WIT_WORLD, "componentize", "app",
                       "-p", ".", "-o", str(output)]  # fmt: skip
            finished = _with_progress(
                f"{name}: building the WebAssembly component",
                on_progress,
                lambda: subprocess.run(command, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL),
            )
            if finished.returncode != 0 or not output.exists():
                raise _build_error(name, finished.stderr + finished.stdout)
            partial = folder / f".partial-{key}.wasm"
            shutil.copyfile(output, partial)
            os.replace(partial, component)
    if not precompiled.exists():
        built = True
        _with_progress(
            f"{name}: compiling it for wasmtime",
            on_progress,
            lambda: _wasm.precompile(_wasm.engine(), str(component), str(precompiled)),
        )
    return component, precompiled, built


def _allowed_dir(name: str, allow_read: str | None) -> str | None:
    if allow_read is None:
        return None
    path = os.path.realpath(os.path.expanduser(allow_read))
    if not os.path.isdir(path):
        raise DefinitionError(f"{name} --allow-read {allow_read}: not a directory")
    return path


def from_wasm_cell(
    cell: str,
    namespace: Mapping[str, Any],
    limits: Limits,
    name: str | None = None,
    params: list[str] | None = None,
    magic_line: str = "",
    allow_read: str | None = None,
    on_progress: Progress = _no_progress,
) -> FunctionDefinition:
    """A definition from a pure-Python cell built into a WebAssembly component (slow once per content hash)."""
    params = list(params or [])
    label = name or "%%faas"
    try:
        tree = ast.parse(cell)
    except SyntaxError as e:
        raise DefinitionError(f"{label}: {e.msg} (cell line {(e.lineno or 0) + 1})") from None
    check_wasm_imports(label, tree)
    granted = _allowed_dir(label, allow_read)
    definition = from_cell(cell, namespace, limits, name=name, params=params, magic_line=magic_line)
    spec = _cell_spec(cell, namespace, definition, params, name)
    component, precompiled, _ = build_component(definition.name, spec, on_progress)
    # The build key hashes everything the component is made of: it names the component's content.
    digest = component.stem
    program = _wasm.WasmProgram(
        name=definition.name,
        params=tuple(definition.signature.parameters),
        timeout=limits.timeout,
        memory=limits.memory,
        component=str(component),
        digest=digest,
        precompiled=str(precompiled),
        allow_read=granted,
    )
    return _definition(program, definition.signature, limits, definition.source, definition.filename)
