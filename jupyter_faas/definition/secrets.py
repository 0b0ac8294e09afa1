"""Secrets: environment variables a function declares by name, passed from the platform's environment per call."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable

from jupyter_faas.definition.model import FunctionDefinition
from jupyter_faas.errors import DefinitionError, MissingSecret

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_names(names: Iterable[str]) -> tuple[str, ...]:
    """Secret names, checked to be environment variable names; in the order given, without repeats."""
    if isinstance(names, str):
        raise DefinitionError(f"secrets is a list of environment variable names, e.g. [{names!r}], not a string")
    parsed: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DefinitionError(
                f"a secret is named by an environment variable name (letters, digits and _), got {name!r}"
            )
        if name not in parsed:
            parsed.append(name)
    return tuple(parsed)


def with_secrets(definition: FunctionDefinition, names: Iterable[str]) -> FunctionDefinition:
    """The definition, declaring `names`: only the names are kept, never a value."""
    return dataclasses.replace(definition, secrets=parse_names(names))


def values_for(definition: FunctionDefinition) -> dict[str, str] | None:
    """The declared secrets' values from this process's environment, read now; None when it declares none."""
    if not definition.secrets:
        return None
    missing = [name for name in definition.secrets if name not in os.environ]
    if missing:
        raise MissingSecret(
            f"{definition.name} needs the secret {', '.join(missing)}, which is not set in the environment of "
            f"the process that runs its platform (pid {os.getpid()}): set it there, then call again"
        )
    return {name: os.environ[name] for name in definition.secrets}
