"""Packages a function declares it needs: checked here when the cluster shares this environment,
installed on the workers (distributed's PipInstall) when it does not."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

from jupyter_faas import config as _config
from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.errors import DefinitionError


def parse(requirements: Iterable[str]) -> tuple[str, ...]:
    parsed = []
    for text in requirements:
        try:
            parsed.append(str(Requirement(str(text))))
        except InvalidRequirement as e:
            raise DefinitionError(f"requirement {text!r} is not a pip requirement like 'pillow>=10': {e}") from None
    return tuple(parsed)


def shares_this_environment() -> bool:
    """The embedded cluster, or the one of the Jupyter server that started this kernel: same Python, same packages."""
    # Imported here: a definition does not load distributed (dispatch.cluster does) until it asks this.
    from jupyter_faas.dispatch.cluster import OWNER_SCHEDULER_ENV

    if os.environ.get(OWNER_SCHEDULER_ENV) and _config.share_server():
        return True
    return not (_config.cluster_address() or _config.cluster_factory())


def missing_here(requirements: Iterable[str]) -> list[str]:
    """The requirements this environment does not satisfy, each with what it has instead."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} ({installed} is installed)")
    return missing


def with_requirements(definition: FunctionDefinition, requirements: Iterable[str]) -> FunctionDefinition:
    """The definition, declaring `requirements`; a cluster that shares this environment must already have them."""
    declared = parse(requirements)
    if declared and shares_this_environment():
        missing = missing_here(declared)
        if missing:
            command = "pip install " + " ".join(f"'{text.split(' (')[0]}'" for text in missing)
            raise DefinitionError(
                f"{definition.name} needs {', '.join(missing)}; the embedded cluster uses this environment, "
                f"so install it here: {command}"
            )
    return dataclasses.replace(definition, requirements=declared)


def plugin_name(requirements: tuple[str, ...]) -> str:
    return "jupyter-faas-pip-" + hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
