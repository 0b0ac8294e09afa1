"""What a function's signature says to the HTTP contract beyond its types: whether it takes a raw body."""

from __future__ import annotations

from jupyter_faas.contract import annotation_name
from jupyter_faas.definition.model import FunctionDefinition


def takes_bytes(definition: FunctionDefinition) -> bool:
    """Whether the function's first parameter is annotated `bytes`: it gets a file's contents, or a raw body."""
    parameters = list(definition.signature.parameters.values())
    return bool(parameters) and annotation_name(parameters[0].annotation) == "bytes"
