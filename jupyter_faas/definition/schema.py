"""Parameters checked at the door with pydantic: list[int], Optional, Literal, dataclasses, TypedDicts, models."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import threading
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import typing_extensions
from pydantic import PydanticUserError, TypeAdapter, ValidationError

from jupyter_faas.contract import annotation_name
from jupyter_faas.definition.model import FunctionDefinition

# Definitions whose validators are kept, newest used last; each holds a few compiled pydantic schemas.
MAX_CACHED = 128
# Problems named in one answer at most.
MAX_PROBLEMS = 3


class ArgumentInvalid(ValueError):
    """An argument that does not fit its parameter's annotation; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Validators:
    """The pydantic adapters of one definition's parameters whose annotation is more than a plain type."""

    adapters: dict[str, TypeAdapter[Any]]


def _plain(annotation: Any) -> bool:
    """Checked by the plain type check already (int, str, bytes...), or not at all (no annotation, Any)."""
    return annotation is inspect.Parameter.empty or annotation is Any or annotation_name(annotation) is not None


def _resolved(definition: FunctionDefinition) -> dict[str, Any]:
    """Each parameter's annotation, with those written as text (`from __future__ import annotations`) evaluated
    in the function's own globals (what it captured) and typing's names; one that names nothing known stays text."""
    annotations = {name: p.annotation for name, p in definition.signature.parameters.items()}
    if any(isinstance(a, str) and annotation_name(a) is None for a in annotations.values()):
        namespace = {**vars(typing), **definition.load().__globals__}
        for name, annotation in annotations.items():
            if isinstance(annotation, str) and annotation_name(annotation) is None:
                with contextlib.suppress(Exception):  # a name unknown here: not checked at the door
                    annotations[name] = eval(annotation, namespace)  # the function's own code, run by its owner
    return annotations


def _compatible(annotation: Any) -> Any:
    """pydantic reads a typing.TypedDict only from Python 3.12 on: before, the same one from typing_extensions."""
    if typing.is_typeddict(annotation) and not isinstance(annotation, typing_extensions._TypedDictMeta):  # type: ignore[attr-defined]
        hints = typing.get_type_hints(annotation, include_extras=True)
        required = getattr(annotation, "__required_keys__", frozenset(hints))
        fields = {
            name: (typing_extensions.Required[hint] if name in required else typing_extensions.NotRequired[hint])
            for name, hint in hints.items()
        }
        return typing_extensions.TypedDict(annotation.__name__, fields)  # type: ignore[operator]
    return annotation


def _repair_missing(annotation: Any, seen: set[int] | None = None) -> None:
    """Put dataclasses.MISSING back in the fields of the dataclasses `annotation` uses.

    cloudpickle (3.1) copies a dataclass defined in a notebook by value, and its fields' MISSING sentinel with it:
    a copy that is not MISSING, so every field without a default looks as if it had one, and pydantic refuses it.
    """
    seen = set() if seen is None else seen
    if id(annotation) in seen:
        return
    seen.add(id(annotation))
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        for field in dataclasses.fields(annotation):
            for attribute in ("default", "default_factory"):
                if type(getattr(field, attribute)).__name__ == "_MISSING_TYPE":
                    setattr(field, attribute, dataclasses.MISSING)
            _repair_missing(field.type, seen)
    for argument in typing.get_args(annotation):
        _repair_missing(argument, seen)


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    if isinstance(annotation, str):
        return None  # text that names nothing known here
    _repair_missing(annotation)
    try:
        return TypeAdapter(annotation)
    except (PydanticUserError, TypeError, NameError):
        try:
            return TypeAdapter(_compatible(annotation))
        except Exception:  # an annotation pydantic cannot read is not checked at the door
            return None


_cache: OrderedDict[str, Validators] = OrderedDict()
_cache_lock = threading.Lock()


def validators(definition: FunctionDefinition) -> Validators:
    """The definition's validators, made once per version."""
    with _cache_lock:
        found = _cache.get(definition.version)
        if found is not None:
            _cache.move_to_end(definition.version)
            return found
    adapters: dict[str, TypeAdapter[Any]] = {}
    for name, annotation in _resolved(definition).items():
        parameter = definition.signature.parameters[name]
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or _plain(annotation):
            continue
        adapter = _adapter(annotation)
        if adapter is not None:
            adapters[name] = adapter
    made = Validators(adapters)
    with _cache_lock:
        _cache[definition.version] = made
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return made


def _where(location: tuple[Any, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)


def validate(definition: FunctionDefinition, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` (by parameter name, as JSON read them) checked and converted to their annotated types.

    Strict, as JSON means it: "1" is no int, but an object is a dataclass, a TypedDict or a model. Raises
    ArgumentInvalid naming the first parameter that does not fit, and what is wrong where.
    """
    adapters = validators(definition).adapters
    checked = dict(arguments)
    for name, value in arguments.items():
        adapter = adapters.get(name)
        if adapter is None:
            continue
        try:
            checked[name] = adapter.validate_json(json.dumps(value), strict=True)
        except ValidationError as e:
            problems = [f"{name}{_where(tuple(error['loc']))}: {error['msg']}" for error in e.errors()[:MAX_PROBLEMS]]
            more = f" (and {e.error_count() - MAX_PROBLEMS} more)" if e.error_count() > MAX_PROBLEMS else ""
            raise ArgumentInvalid(
                name, f"parameter {name!r} does not fit {_shown(adapter)}: {'; '.join(problems)}{more}"
            ) from None
        except (TypeError, ValueError) as e:
            raise ArgumentInvalid(name, f"parameter {name!r}: {e}") from None
    return checked


def _shown(adapter: TypeAdapter[Any]) -> str:
    shown = getattr(adapter._type, "__name__", None) or repr(adapter._type)
    return shown.replace("typing.", "")


def json_schema(definition: FunctionDefinition, name: str, ref_prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON schema of parameter `name` (empty if none is known) and the named schemas it refers to, each
    named `ref_prefix` + its own name, referred to under #/components/schemas/."""
    adapter = validators(definition).adapters.get(name)
    if adapter is None:
        return {}, {}
    try:
        schema = adapter.json_schema(ref_template=f"#/components/schemas/{ref_prefix}{{model}}")
    except Exception:  # a type with no JSON schema (a callable, say) is documented as any value
        return {}, {}
    definitions = schema.pop("$defs", {})
    return schema, {f"{ref_prefix}{key}": value for key, value in definitions.items()}
