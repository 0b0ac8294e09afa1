"""Client against workers: versions that would break unpickling are an error, others a warning."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from jupyter_faas.errors import VersionMismatch

# What must match for pickles to travel: Python's minor version, cloudpickle's major, and jupyter_faas
# itself (its wire protocol). dask and distributed warn: Dask itself tolerates small differences.
_FATAL = {"python": 2, "cloudpickle": 1, "jupyter_faas": 3}
_WARN = {"dask": 3, "distributed": 3}
_PACKAGES = ("cloudpickle", "jupyter_faas", "dask", "distributed")


def _parts(version: str | None, count: int) -> tuple[str, ...] | None:
    if not version:
        return None
    return tuple(version.split("+")[0].split(".")[:count])


def _packages(side: Mapping[str, Any]) -> dict[str, str | None]:
    """{"python": "3.11.7", "cloudpickle": "3.1.3", ...} from one side of Client.get_versions()."""
    found: dict[str, str | None] = {}
    python = side.get("host", {}).get("python")
    found["python"] = str(python).split()[0] if python else None
    packages = side.get("packages", {})
    for name in _PACKAGES:
        found[name] = packages.get(name)
    return found


def compare(versions: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the client against each worker in `Client.get_versions(packages=...)`."""
    client = _packages(versions.get("client", {}))
    errors: list[str] = []
    warnings: list[str] = []
    for worker, info in sorted((versions.get("workers") or {}).items()):
        theirs = _packages(info)
        for rules, out in ((_FATAL, errors), (_WARN, warnings)):
            for name, depth in rules.items():
                mine, other = client.get(name), theirs.get(name)
                if other is None and name == "jupyter_faas":
                    continue  # reported at connect with the install command, by the sandbox plugin
                if _parts(mine, depth) != _parts(other, depth):
                    out.append(f"{name} {mine or 'missing'} here, {other or 'missing'} on worker {worker}")
    return errors, warnings


def verify(versions: Mapping[str, Any]) -> None:
    """Raise VersionMismatch for what would break unpickling; warn, once each, about the rest."""
    errors, mismatches = compare(versions)
    if errors:
        raise VersionMismatch(
            "the cluster's workers cannot load what this notebook sends: "
            + "; ".join(errors)
            + ". Use the same Python minor version, cloudpickle major version and jupyter-faas on both sides."
        )
    for mismatch in mismatches:
        warnings.warn(f"jupyter_faas: version mismatch, which usually works: {mismatch}", stacklevel=3)


def check(client: Any) -> None:
    """Ask the cluster's workers for their versions, and `verify` them against this process."""
    verify(client.get_versions(check=False, packages=list(_PACKAGES)))
