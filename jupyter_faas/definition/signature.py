"""What a function's signature says to the HTTP contract: plain JSON types, and whether it takes raw bytes."""

from __future__ import annotations

from typing import Any

from jupyter_faas.definition.model import FunctionDefinition

# JSON types a plain annotation asks for; other annotations are not checked at the door.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def annotation_name(annotation: Any) -> str | None:
    """ "int" for int or 'int'; None for annotations that are not a plain builtin type."""
    if isinstance(annotation, str):
        return annotation if annotation in (*JSON_TYPES, "bytes") else None
    if isinstance(annotation, type) and annotation.__name__ in (*JSON_TYPES, "bytes"):
        return annotation.__name__
    return None


def takes_bytes(definition: FunctionDefinition) -> bool:
    """Whether the function's first parameter is annotated `bytes`: it gets a file's contents, or a raw body."""
    parameters = list(definition.signature.parameters.values())
    return bool(parameters) and annotation_name(parameters[0].annotation) == "bytes"
