"""--runtime wasm: a Python cell built into a WebAssembly component, run by wasmtime on the embedded cluster."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasFunction
from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.polyglot import from_wasm_cell
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import DefinitionError, FaasMemoryError, FaasTimeout
from jupyter_faas.worker import runtimes as _runtimes
from tests.helpers import WASM_CACHE, faas_shell, run_ok

# One cell, built once (the cache keeps it across sessions), that every test here calls in its own way.
EDGE = """\
import hashlib, hmac, json
print(f"edge {mode}")
if mode == "verify":
    key, payload, signature = arg
    digest = hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()
    result = hmac.compare_digest(digest, signature)
elif mode == "read":
    with open(arg) as f:
        result = f.read()
elif mode == "loop":
    while True:
        pass
elif mode == "grow":
    chunks = []
    while True:
        chunks.append(bytearray(2**20))
elif mode == "fail":
    result = 1 / 0
elif mode == "count":
    # State kept where a warm Python sandbox would keep it: on an imported module.
    seen = getattr(json, "faas_seen", [])
    seen.append(arg)
    json.faas_seen = seen
    result = len(seen)
elif mode == "alloc":
    result = len(bytearray(arg))
else:
    result = {"echo": arg, "sha": hashlib.sha256(json.dumps(arg).encode()).hexdigest()}
result
"""
LINE = "edge mode arg=None --runtime wasm --timeout 3s --memory 256MB"


@pytest.fixture(scope="module")
def edge() -> Iterator[dict[str, FaasFunction]]:
    """The cell in WebAssembly, the same cell in the Python sandbox, and in WebAssembly with a readable folder."""
    with faas_shell() as shell:
        run_ok(shell, f"%%faas {LINE}\n{EDGE}")
        wasm = shell.user_ns["edge"]
        run_ok(shell, f"%%faas edge mode arg=None --timeout 3s\n{EDGE}")
        python = shell.user_ns["edge"]
        yield {"wasm": wasm, "python": python, "shell": shell}


def test_results_cross_as_json(edge: dict[str, FaasFunction], platform: Platform) -> None:
    wasm = edge["wasm"]
    signature = hmac.new(b"k", b"body", hashlib.sha256).hexdigest()
    assert wasm("verify", ["k", "body", signature]) is True
    assert wasm("verify", ["k", "body!", signature]) is False
    assert wasm("echo", {"a": [1, 2.5, None, "é"]})["echo"] == {"a": [1, 2.5, None, "é"]}
    assert wasm.map(["echo"] * 6, range(6)) == [edge["python"]("echo", i) for i in range(6)]


def test_every_record_carries_its_instantiation_time_and_a_python_record_none(
    edge: dict[str, FaasFunction], platform: Platform
) -> None:
    wasm, python = edge["wasm"], edge["python"]
    # Both are called `edge`: their records are told apart by version.
    seen = len(platform.records("edge"))
    wasm.map(["echo"] * 4, range(4))
    with pytest.raises(ZeroDivisionError):
        wasm("fail")
    # Right after WebAssembly calls, in sandboxes that ran them: nothing of theirs may reach a Python record.
    python.map(["echo"] * 4, range(4))
    records = platform.records("edge")[seen:]
    in_wasm = [record for record in records if record.version == wasm.version]
    in_python = [record for record in records if record.version == python.version]
    assert len(in_wasm) == 5 and len(in_python) == 4, records
    # Every call is a new instance, an error's too, each with the time it took to make (ahead of the call, or
    # when there was none ready, during it).
    for record in in_wasm:
        assert record.init_ms is not None and record.duration_ms is not None, record
        assert 0 < record.init_ms < 1000, record
    assert [record.status for record in in_wasm].count("error") == 1
    assert all(record.init_ms is None for record in in_python), in_python


def test_a_value_that_is_not_json_is_refused_naming_the_argument(
    edge: dict[str, FaasFunction], platform: Platform
) -> None:
    with pytest.raises(TypeError, match=r"argument #2 \(set\) is not a JSON value"):
        edge["wasm"]("echo", {1, 2})


def test_the_filesystem_is_not_there_unless_granted(
    edge: dict[str, FaasFunction], platform: Platform, tmp_path: Path
) -> None:
    # The same cell reads /etc/passwd in the Python sandbox, and cannot in WebAssembly.
    assert "root" in edge["python"]("read", "/etc/passwd")
    with pytest.raises(FileNotFoundError, match="/etc/passwd"):
        edge["wasm"]("read", "/etc/passwd")
    (tmp_path / "granted.txt").write_text("hello from the host")
    shell = edge["shell"]
    run_ok(shell, f"%%faas {LINE} --allow-read {tmp_path}\n{EDGE}")
    reader = shell.user_ns["edge"]
    assert reader("read", str(tmp_path / "granted.txt")) == "hello from the host"
    # One folder, read-only: nothing beside it, and no writing into it.
    with pytest.raises(FileNotFoundError):
        reader("read", "/etc/passwd")
    with pytest.raises(OSError):
        reader("read", str(tmp_path / "missing.txt"))


def test_the_timeout_stops_an_endless_loop_and_the_next_call_works(
    edge: dict[str, FaasFunction], platform: Platform
) -> None:
    began = time.monotonic()
    with pytest.raises(FaasTimeout, match="timeout of 3s"):
        edge["wasm"]("loop")
    assert time.monotonic() - began < 10
    assert edge["wasm"]("echo", 1)["echo"] == 1
    timed_out = [record for record in platform.records("edge") if record.status == "timeout"]
    # It was instantiated before it looped: its record says how long that took.
    assert timed_out and timed_out[-1].init_ms is not None and timed_out[-1].init_ms > 0


def test_every_call_starts_from_a_blank_instance_even_after_a_timeout_or_a_memory_error(
    edge: dict[str, FaasFunction], platform: Platform
) -> None:
    """Instances are made ahead, right after a call: none may be one a call already ran in."""
    wasm, python = edge["wasm"], edge["python"]
    # The same cell in the warm Python sandbox does keep what a call leaves on a module (documented): twenty
    # calls on a few sandboxes, so some sandbox runs several of them.
    assert max(python("count", n) for n in range(20)) > 1
    assert [wasm("count", n) for n in range(6)] == [1] * 6
    assert wasm.map(["count"] * 8, range(8)) == [1] * 8
    with pytest.raises(FaasTimeout):
        wasm("loop")
    assert wasm("count", "after a timeout") == 1
    with pytest.raises(FaasMemoryError):
        wasm("grow")
    assert wasm("count", "after a memory error") == 1


def test_the_memory_limit_is_the_stores(edge: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(FaasMemoryError):
        edge["wasm"]("grow")
    assert edge["wasm"]("echo", 2)["echo"] == 2


def test_an_error_keeps_its_type_and_the_cells_line(edge: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(ZeroDivisionError) as caught:
        edge["wasm"]("fail")
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    # Line 18 of the cell, which is line 19 counting the magic line, as for any cell.
    assert 'File "<faas-cell edge>", line 19' in notes and "result = 1 / 0" in notes


def test_output_is_captured_per_invocation(edge: dict[str, FaasFunction], platform: Platform) -> None:
    edge["wasm"]("echo", "out")
    assert "edge echo" in edge["wasm"].logs(1)


def test_a_second_definition_of_the_same_cell_does_not_rebuild(tmp_path: Path) -> None:
    limits = Limits(timeout=5, memory=2**28, retries=0, concurrency=None)
    params = ["mode", "arg=None"]
    first = from_wasm_cell(EDGE, {}, limits, name="edge", params=params, magic_line=LINE)
    component = [path for path in WASM_CACHE.iterdir() if path.suffix == ".wasm"]
    stamps = {path: path.stat().st_mtime_ns for path in WASM_CACHE.iterdir()}
    progress: list[str] = []
    began = time.monotonic()
    # Other options, same cell: the same component.
    second = from_wasm_cell(
        EDGE, {}, Limits(timeout=9, memory=2**29, retries=0, concurrency=None), name="edge", params=params,
        magic_line=LINE + " --timeout 9s", on_progress=progress.append,
    )  # fmt: skip
    assert progress == [] and time.monotonic() - began < 3
    assert component and {path: path.stat().st_mtime_ns for path in WASM_CACHE.iterdir()} == stamps
    assert first.version != second.version  # its limits travel with it


def test_an_import_webassembly_cannot_run_fails_the_definition_in_one_line(shell: InteractiveShell) -> None:
    for module in ("numpy", "socket", "subprocess"):
        result = shell.run_cell(f"%%faas crunch x --runtime wasm\nimport {module}\nx")
        assert isinstance(result.error_in_exec, UsageError)
        message = str(result.error_in_exec)
        assert f"cannot import {module} in WebAssembly" in message and "\n" not in message
    with pytest.raises(DefinitionError, match="reads lookup .*dict.* only modules and JSON values"):
        from_wasm_cell("lookup[x]", {"lookup": {1: object()}}, Limits(5, 2**28, 0, None), name="f", params=["x"])


def test_python_only_options_are_refused(shell: InteractiveShell) -> None:
    for option in ("--requirements pillow", "--secret TOKEN", "--isolation fresh"):
        result = shell.run_cell(f"%%faas f x --runtime wasm {option}\nx")
        assert isinstance(result.error_in_exec, UsageError)
        assert option.split()[0] in str(result.error_in_exec)
    result = shell.run_cell("%%faas f x --allow-read /tmp\nx")
    assert "--allow-read goes with --runtime wasm" in str(result.error_in_exec)


def test_the_runtime_itself_stops_a_call_and_stays_usable(edge: dict[str, FaasFunction]) -> None:
    # In this process, without the sandbox: the engine survives its timeout, and instantiation is timed.
    function = edge["wasm"]._definition.load()
    with pytest.raises(FaasTimeout):
        function("loop")
    assert function("echo", 3)["echo"] == 3
    assert _runtimes.last_init_ms is not None and _runtimes.last_init_ms < 200


def test_an_instance_made_ahead_is_used_only_under_the_memory_limit_it_was_made_with(
    edge: dict[str, FaasFunction],
) -> None:
    # In this process: the same component under two memory limits, called in turn. Each call's instance is made
    # ahead by the call before, under that call's limit; the store's limit is what this process leaves of it.
    rss = psutil.Process().memory_info().rss
    params = ["mode", "arg=None"]
    roomy = from_wasm_cell(
        EDGE, {}, Limits(timeout=20, memory=rss + 2**30, retries=0, concurrency=None), name="edge", params=params,
        magic_line=LINE,
    ).load()  # fmt: skip
    tight = from_wasm_cell(
        EDGE, {}, Limits(timeout=20, memory=2**20, retries=0, concurrency=None), name="edge", params=params,
        magic_line=LINE,
    ).load()  # fmt: skip
    size = 200 * 2**20
    for _ in range(2):
        assert roomy("alloc", size) == size
        with pytest.raises(FaasMemoryError):
            tight("alloc", size)  # made ahead by roomy's call, its instance would have room for this
        with pytest.raises(FaasMemoryError):
            tight("alloc", size)
        assert roomy("alloc", size) == size  # and the other way round
