"""The package's layout rules, checked over its import graph: function-local imports count.

- `jupyter_faas/worker/` imports only `jupyter_faas.units`, `jupyter_faas.errors` and `jupyter_faas.worker.*`,
  and never IPython, ipywidgets, tornado or jupyter_server: a worker is not a notebook nor a server.
- `jupyter_faas/record/` never imports `jupyter_faas/dispatch/`.
- `jupyter_faas/ui/` never imports `jupyter_faas/client/`: the UI reads records; the notebook's objects own
  their views and hand them what to show.
- No import cycles between modules. Two kinds of edges are left out of the cycle check only: imports under
  `if TYPE_CHECKING:` (they never run), and imports of the package root `jupyter_faas` itself (the public facade
  loads its names lazily, and modules read `__version__` from it). Both still count for the two rules above.
"""

from __future__ import annotations

import ast
import itertools
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jupyter_faas

PACKAGE = Path(jupyter_faas.__file__).parent
WORKER_MAY_IMPORT = ("jupyter_faas.units", "jupyter_faas.errors", "jupyter_faas.worker")
WORKER_NEVER_IMPORTS = ("IPython", "ipywidgets", "ipykernel", "tornado", "jupyter_server")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module
    where: str  # file:line, relative to the package's parent
    type_checking: bool


def _module_name(package: Path, path: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(package: Path, dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = package / relative
    return dotted == package.name or base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                guarded.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return guarded


def _parse(path: Path) -> ast.Module:
    """The module's syntax tree, parsed on a thread of its own.

    CPython 3.11 can leave a thread's AST recursion count wrong after a RecursionError caught while building a tree
    (an earlier test feeding deeply nested input); every later ast.parse on that thread then raises SystemError.
    A new thread starts with a clean count.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(ast.parse, path.read_text(), str(path)).result()


def imports(package: Path = PACKAGE) -> list[Import]:
    """Every import statement of every module, module-level or not."""
    found: list[Import] = []
    for path in sorted(package.rglob("*.py")):
        tree = _parse(path)
        module = _module_name(package, path)
        is_package = path.name == "__init__.py"
        guarded = _type_checking_nodes(tree)
        where = f"{path.relative_to(package.parent)}"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    # `from jupyter_faas.worker import wire` imports the module wire; `from x import name`, x.
                    is_sub = candidate.startswith(package.name + ".") and _is_module(package, candidate)
                    targets.append(candidate if is_sub else base)
            for target in dict.fromkeys(targets):
                found.append(Import(module, target, f"{where}:{node.lineno}", id(node) in guarded))
    return found


def _in(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def rule_violations(package: Path = PACKAGE) -> list[str]:
    """The imports that break the worker and record rules, each with its file:line."""
    name = package.name
    worker, record, dispatch = f"{name}.worker", f"{name}.record", f"{name}.dispatch"
    ui, client = f"{name}.ui", f"{name}.client"
    allowed = tuple(p.replace("jupyter_faas", name, 1) for p in WORKER_MAY_IMPORT)
    bad: list[str] = []
    for i in imports(package):
        outside = (_in(i.target, (name,)) and not _in(i.target, allowed)) or _in(i.target, WORKER_NEVER_IMPORTS)
        if _in(i.module, (worker,)) and outside:
            bad.append(f"{i.where}: the worker imports {i.target}")
        if _in(i.module, (record,)) and _in(i.target, (dispatch,)):
            bad.append(f"{i.where}: record/ imports {i.target}")
        if _in(i.module, (ui,)) and _in(i.target, (client,)):
            bad.append(f"{i.where}: ui/ imports {i.target}")
    return bad


def cycles(package: Path = PACKAGE) -> list[str]:
    """One line per import cycle found: its modules in order, each edge with the file:line that makes it."""
    name = package.name
    edges: dict[str, dict[str, str]] = {}
    for i in imports(package):
        if i.type_checking or i.target == name or not _in(i.target, (name,)) or i.target == i.module:
            continue
        edges.setdefault(i.module, {}).setdefault(i.target, i.where)
    found: list[str] = []
    seen_cycles: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            key = frozenset(cycle)
            if key not in seen_cycles:
                seen_cycles.add(key)
                found.append(" -> ".join(f"{a} ({edges[a][b]})" for a, b in itertools.pairwise(cycle)))
            return
        if module in done:
            return
        for target in edges.get(module, {}):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    return found


def test_the_worker_and_record_rules_hold() -> None:
    found = rule_violations()
    assert not found, "\n".join(found)


def test_there_are_no_import_cycles() -> None:
    found = cycles()
    assert not found, "\n".join(found)


def test_the_checks_see_function_local_imports_and_name_the_line(tmp_path: Path) -> None:
    """Planted violations, inside functions, are each reported with their file and line."""
    package = tmp_path / "jupyter_faas"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("labextension", "__pycache__"))
    assert rule_violations(package) == [] and cycles(package) == []

    def plant(relative: str, code: str) -> int:
        path = package / relative
        lines = path.read_text().splitlines()
        path.write_text("\n".join([*lines, "", "", "def _planted() -> None:", f"    {code}", ""]))
        return len(lines) + 4

    gateway_line = plant("worker/wire.py", "from jupyter_faas.gateway import service")
    ipython_line = plant("worker/code.py", "import IPython")
    dispatch_line = plant("record/cost.py", "from jupyter_faas.dispatch.platform import Platform")
    cycle_line = plant("units.py", "from jupyter_faas.worker import capture")
    client_line = plant("ui/figures.py", "from jupyter_faas.client import deploy")

    assert rule_violations(package) == [
        f"jupyter_faas/record/cost.py:{dispatch_line}: record/ imports jupyter_faas.dispatch.platform",
        f"jupyter_faas/ui/figures.py:{client_line}: ui/ imports jupyter_faas.client.deploy",
        f"jupyter_faas/worker/code.py:{ipython_line}: the worker imports IPython",
        f"jupyter_faas/worker/wire.py:{gateway_line}: the worker imports jupyter_faas.gateway.service",
    ]
    found = cycles(package)
    assert any(f"jupyter_faas/units.py:{cycle_line}" in cycle for cycle in found), found
