"""Turning cells and defs into definitions: both cell forms, capture by value, and the errors users see."""

from __future__ import annotations

import hashlib
import threading
import traceback
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import cell_filename, from_callable, from_cell
from jupyter_faas.errors import DefinitionError

LIMITS = Limits(timeout=10.0, memory=256 * 10**6, retries=0, concurrency=None)


def define(cell: str, namespace: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return from_cell(cell, namespace if namespace is not None else {}, LIMITS, **kwargs)


def test_form_one_makes_the_cell_a_body_with_the_last_expression_returned() -> None:
    definition = define(
        "words = [w for w in text.split() if len(w) >= min_len]\nlen(words)",
        name="word_count",
        params=["text", "min_len=1"],
    )
    assert str(definition.signature) == "(text, min_len=1)"
    assert definition.load()("a bb ccc", min_len=2) == 2
    assert definition.load()("a bb ccc") == 3


def test_form_one_return_works_anywhere_and_annotations_are_kept() -> None:
    definition = define("if x < 0:\n    return 'negative'\n'positive'", name="sign", params=["x:int"])
    assert definition.load()(-1) == "negative"
    assert definition.load()(1) == "positive"
    assert definition.signature.parameters["x"].annotation is int


def test_form_one_without_parameters_and_without_a_final_expression_returns_none() -> None:
    assert define("y = 1", name="nothing").load()() is None


def test_form_one_keeps_quoted_and_bracketed_defaults() -> None:
    definition = define("f'{greeting} {xs}'", name="greet", params=['greeting="hello world"', "xs=[1, 2]"])
    assert definition.load()() == "hello world [1, 2]"


def test_form_one_defaults_may_use_notebook_names() -> None:
    assert define("n", {"DEFAULT": 4}, name="f", params=["n=DEFAULT"]).load()() == 4


def test_form_two_uses_the_one_def_and_its_environment() -> None:
    cell = (
        "import hashlib\nSALT = b's'\n"
        "def sha(data: bytes) -> str:\n    return hashlib.sha256(SALT + data).hexdigest()\n"
    )
    definition = define(cell)
    assert definition.name == "sha"
    assert definition.load()(b"x") == hashlib.sha256(b"sx").hexdigest()
    assert set(definition.captured) == {"SALT", "hashlib"}


def test_form_two_can_be_renamed() -> None:
    definition = define("def double(x):\n    return 2 * x\n", name="twice")
    assert definition.name == "twice"
    assert definition.load()(4) == 8


def test_form_two_name_chooses_among_several_defs_and_helpers_travel() -> None:
    cell = "def helper(x):\n    return x + OFFSET\n\ndef main(x):\n    return helper(x) * 2\n"
    definition = define(cell, {"OFFSET": 10}, name="main")
    assert definition.load()(1) == 22


def test_a_cell_with_no_def_and_no_name_says_what_to_write() -> None:
    with pytest.raises(DefinitionError, match=r"name one to make the cell its body \(%%faas NAME \[params\]\)"):
        define("1 + 1")


def test_a_cell_with_two_defs_and_no_name_lists_them() -> None:
    with pytest.raises(DefinitionError, match=r"defines 2 functions \(a, b\); name the one to run, e.g. %%faas a"):
        define("def a():\n    pass\ndef b():\n    pass\n")


def test_async_defs_generators_and_warm_classes_are_bound_with_their_kind() -> None:
    assert define("async def f():\n    pass\n").kind == "async"
    assert define("def g():\n    yield 1\n").kind == "generator"
    assert define("async def h():\n    yield 1\n").kind == "async_generator"
    warm = define("class Model:\n    def setup(self):\n        self.k = 2\n\n    def __call__(self, x: int) -> int:\n"
                  "        return x * self.k\n")  # fmt: skip
    assert warm.warm_class and warm.kind == "def" and str(warm.signature) == "(x: int) -> int"
    # A class without __call__ beside a def is an ordinary helper: the def is the function.
    assert define("class Helper:\n    pass\n\ndef f():\n    return Helper\n").name == "f"


def test_undefined_names_are_all_named_before_anything_is_sent() -> None:
    with pytest.raises(DefinitionError, match="^word_count uses undefined names: bar, foo$"):
        define("foo + bar + len(text)", name="word_count", params=["text"])


def test_names_only_assigned_through_global_are_not_required() -> None:
    assert define("global fresh\nfresh = 3\nfresh", name="f").load()() == 3


def test_free_names_are_captured_by_value_at_definition() -> None:
    namespace = {"scale": 2, "items": [1, 2]}
    definition = define("scale * sum(items)", namespace, name="total")
    namespace["scale"] = 100
    namespace["items"].append(50)
    assert definition.load()() == 6


def test_each_load_is_a_fresh_copy_so_state_does_not_leak() -> None:
    namespace = {"counter": 0, "seen": []}
    definition = define(
        "global counter\ncounter += 1\nseen.append(counter)\nreturn (counter, len(seen))", namespace, name="bump"
    )
    assert [definition.load()() for _ in range(3)] == [(1, 1)] * 3
    assert not definition.reusable  # a captured list could be mutated, so workers must load it per call


def test_only_immutable_captures_make_a_definition_reusable() -> None:
    assert define("x + 1", {"x": 1}, name="f").reusable
    assert define("math.pi", {"math": __import__("math")}, name="f").reusable
    assert not define("x[0]", {"x": [1]}, name="f").reusable
    assert not define("n", name="f", params=["n=[]"]).reusable


def test_an_uncapturable_value_is_named() -> None:
    namespace = {"lock": threading.Lock()}
    with pytest.raises(DefinitionError, match=r"f captures values that cannot be sent to a worker: lock \(lock"):
        define("lock.locked()", namespace, name="f")


def test_the_version_is_a_content_hash_of_the_serialized_function() -> None:
    one = define("x + 1", {"x": 1}, name="f")
    assert one.version == hashlib.sha256(one.payload).hexdigest()
    assert define("x + 1", {"x": 2}, name="f").version != one.version


def test_a_syntax_error_reports_the_cell_line() -> None:
    with pytest.raises(SyntaxError) as caught:
        define("x = 1\ny = (\n", name="f")
    assert caught.value.lineno is not None and caught.value.lineno >= 3


def test_return_outside_form_one_is_reported_as_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="'return' outside function"):
        define("import os\nreturn 1\ndef f():\n    pass\n", name="f")


def test_tracebacks_show_the_cells_own_line_numbers_and_source() -> None:
    definition = define("a = 1\nraise ValueError(f'bad {x}')", name="boom", params=["x"])
    with pytest.raises(ValueError) as caught:
        definition.load()(3)
    text = "".join(traceback.format_exception(caught.value))
    # line 1 is the %%faas line, so the raise is on line 3 of the cell
    assert f'File "{cell_filename("boom")}", line 3, in boom' in text
    assert "raise ValueError(f'bad {x}')" in text


def test_bad_parameters_say_how_to_write_them() -> None:
    with pytest.raises(
        DefinitionError,
        match=r"cannot read the parameters 'x='; write them as in a def, one per token: text min_len=1 x:int",
    ):
        define("1", name="f", params=["x="])


CONSTANT = 5


def _helper(x: int) -> int:
    return x + CONSTANT


def test_from_callable_captures_module_globals_by_value() -> None:
    def add(x: int) -> int:
        return _helper(x) * 2

    definition = from_callable(add, LIMITS)
    assert definition.name == "add"
    # the helper shares the module's globals, so what it reads travels too
    assert set(definition.captured) == {"_helper", "CONSTANT"}
    assert definition.load()(1) == 12


def test_from_callable_refuses_what_is_not_a_def_or_a_class() -> None:
    with pytest.raises(TypeError, match="takes a def or a class"):
        from_callable(len, LIMITS)  # type: ignore[arg-type]

    async def coroutine() -> None:
        pass

    assert from_callable(coroutine, LIMITS).kind == "async"


def test_from_callable_names_undefined_globals() -> None:
    def broken() -> Any:
        return not_defined_anywhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(DefinitionError, match="broken uses undefined names: not_defined_anywhere"):
        from_callable(broken, LIMITS)


@given(st.text(max_size=200))
def test_any_cell_text_either_defines_or_fails_with_a_clear_error(cell: str) -> None:
    try:
        define(cell, name="f")
    except (DefinitionError, SyntaxError, ValueError):
        pass
    except Exception as e:  # running the cell's own top-level code may raise anything; that is the user's code
        assert not isinstance(e, AssertionError)


def test_a_function_reading_its_module_name_is_not_refused() -> None:
    assert define("__name__", {"__name__": "__main__"}, name="where").load()() == "__faas__"


def test_from_callable_checks_a_given_name() -> None:
    def f() -> int:
        return 1

    with pytest.raises(DefinitionError, match="names like __x__ belong to Python"):
        from_callable(f, LIMITS, name="__builtins__")
    assert from_callable(f, LIMITS, name="renamed").name == "renamed"


def test_a_def_using_a_variable_assigned_after_it_is_a_clear_error() -> None:
    def make() -> object:
        def uses_later() -> str:
            return later

        return uses_later

        later = "assigned too late"

    with pytest.raises(DefinitionError, match="uses later, which has no value yet where uses_later is defined"):
        from_callable(make(), Limits(timeout=1.0, memory=2**28, retries=0, concurrency=None))  # type: ignore[arg-type]
