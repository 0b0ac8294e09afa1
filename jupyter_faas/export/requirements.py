"""An export's requirements.txt: what the function declared, and the installed packages its code imports."""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Which installed distributions provide each top-level module; reading every package's metadata takes a while."""
    return dict(metadata.packages_distributions())


def imported_modules(text: str) -> list[str]:
    """The top-level names of the modules a module's code imports, anywhere in it (not relative imports)."""
    found: dict[str, None] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.name.split(".")[0]] = None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found[node.module.split(".")[0]] = None
    return list(found)


def requirements_for(
    name: str, declared: Iterable[str], modules: Iterable[str], extra: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """(requirement lines, warnings): the declared ones as written, then each imported package pinned to the
    version installed here, then what the target's runtime needs."""
    lines = list(dict.fromkeys(declared))
    have = {canonicalize_name(Requirement(line).name) for line in lines}
    warnings: list[str] = []
    distributions = _distributions()
    for module in modules:
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        if module == "jupyter_faas":
            warnings.append(f"{name}: it imports jupyter_faas, which the export does not carry")
            continue
        owners = distributions.get(module)
        if not owners:
            warnings.append(
                f"{name}: it imports {module!r}, which is neither the standard library nor an installed package: "
                "add what provides it to requirements.txt"
            )
            continue
        distribution = owners[0]
        if canonicalize_name(distribution) in have:
            continue
        have.add(canonicalize_name(distribution))
        lines.append(f"{distribution}=={metadata.version(distribution)}")
    for line in extra:
        if canonicalize_name(Requirement(line).name) not in have:
            have.add(canonicalize_name(Requirement(line).name))
            lines.append(line)
    return lines, warnings
