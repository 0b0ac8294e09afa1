"""Parameters checked with pydantic at the door: real annotations, strict JSON meaning, the parameter named."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Optional, TypedDict

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import FunctionDefinition, from_callable
from jupyter_faas.definition.schema import ArgumentInvalid, json_schema, validate, validators


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


class Movie(TypedDict):
    title: str
    year: int


class Order(BaseModel):
    item: str
    quantity: int = 1


# Defined as a notebook cell defines it: annotations are the objects themselves, not text.
CELL = """
def every_kind(counts: list[int], weights: dict[str, float], maybe: Optional[int], mode: Literal["fast", "slow"],
               point: Point, movie: Movie, order: Order, plain: int = 0, anything: Any = None) -> int:
    return plain
"""
_namespace: dict[str, Any] = {"Optional": Optional, "Literal": Literal, "Any": Any, "Point": Point, "Movie": Movie,
                              "Order": Order}  # fmt: skip
exec(compile(CELL, "<cell>", "exec", dont_inherit=True), _namespace)  # not this module's __future__
DEFINITION: FunctionDefinition = from_callable(_namespace["every_kind"], Limits.resolve())
GOOD: dict[str, Any] = {
    "counts": [1, 2],
    "weights": {"a": 1, "b": 2.5},
    "maybe": None,
    "mode": "fast",
    "point": {"x": 1},
    "movie": {"title": "M", "year": 1931},
    "order": {"item": "tea"},
}


def test_good_arguments_become_the_annotated_types() -> None:
    checked = validate(DEFINITION, GOOD)
    assert checked["counts"] == [1, 2]
    assert checked["weights"] == {"a": 1.0, "b": 2.5} and isinstance(checked["weights"]["a"], float)
    assert checked["point"] == Point(1, 0.0)
    assert checked["movie"] == {"title": "M", "year": 1931}
    assert checked["order"] == Order(item="tea", quantity=1)


def test_only_the_rich_annotations_get_a_validator() -> None:
    # int is the plain check's; Any and no annotation are not checked at all.
    assert set(validators(DEFINITION).adapters) == {"counts", "weights", "maybe", "mode", "point", "movie", "order"}


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("counts", [1, "2"], "counts[1]"),
        ("counts", "1,2", "counts"),
        ("weights", {"a": "heavy"}, "weights.a"),
        ("maybe", "3", "maybe"),
        ("mode", "medium", "mode"),
        ("point", {"y": 1.0}, "point.x"),
        ("point", {"x": "1"}, "point.x"),
        ("movie", {"title": "M"}, "movie.year"),
        ("order", {"item": 3}, "order.item"),
        ("order", [1], "order"),
    ],
)
def test_a_bad_argument_is_refused_naming_the_parameter_and_where(name: str, value: Any, where: str) -> None:
    with pytest.raises(ArgumentInvalid) as raised:
        validate(DEFINITION, {**GOOD, name: value})
    assert raised.value.parameter == name
    assert f"parameter {name!r}" in str(raised.value) and where in str(raised.value)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=8))  # fmt: skip
def test_what_the_door_accepts_its_published_schema_accepts_and_nothing_crashes(value: Any) -> None:
    for name in ("counts", "weights", "maybe", "point", "movie", "order", "mode"):
        try:
            validate(DEFINITION, {**GOOD, name: value})
        except ArgumentInvalid as e:
            assert e.parameter == name
            continue
        # Accepted: then the JSON schema the OpenAPI document gives for it accepts the same JSON.
        schema, named = json_schema(DEFINITION, name, "")
        document = {**schema, "$defs": named}
        text = json.dumps(document).replace("#/components/schemas/", "#/$defs/")
        jsonschema.validate(value, json.loads(text))


def test_json_schemas_are_pydantics_with_named_parts_under_the_function() -> None:
    schema, named = json_schema(DEFINITION, "counts", "every_kind.")
    assert schema == {"type": "array", "items": {"type": "integer"}} and named == {}
    schema, _ = json_schema(DEFINITION, "point", "every_kind.")
    assert schema["type"] == "object" and schema["required"] == ["x"]
    assert schema["properties"]["y"]["type"] == "number"
    schema, _ = json_schema(DEFINITION, "maybe", "every_kind.")
    assert schema == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    schema, _ = json_schema(DEFINITION, "mode", "every_kind.")
    assert schema["enum"] == ["fast", "slow"]
    assert json_schema(DEFINITION, "plain", "every_kind.") == ({}, {})
    # A model used inside another type is named once, under the function, and referred to.
    namespace: dict[str, Any] = {"Point": Point}
    exec(compile("def path(points: list[Point]):\n    return 1", "<cell>", "exec", dont_inherit=True), namespace)
    schema, named = json_schema(from_callable(namespace["path"], Limits.resolve()), "points", "path.")
    assert schema == {"type": "array", "items": {"$ref": "#/components/schemas/path.Point"}}
    assert named["path.Point"]["required"] == ["x"]
    json.dumps(named)  # JSON all through


def test_text_annotations_are_resolved_in_the_functions_own_globals() -> None:
    namespace: dict[str, Any] = {"Point": Point}
    source = "from __future__ import annotations\ndef f(xs: list[int], p: Point, q: Missing) -> int:\n    return Point"
    exec(source, namespace)
    definition = from_callable(namespace["f"], Limits.resolve())
    with pytest.raises(ArgumentInvalid) as raised:
        validate(definition, {"xs": [1, "x"], "p": {"x": 1}, "q": 1})
    assert raised.value.parameter == "xs"
    assert validate(definition, {"xs": [1], "p": {"x": 2}, "q": "any"})["p"] == Point(2)
    assert set(validators(definition).adapters) == {"xs", "p"}  # Missing names nothing: not checked
