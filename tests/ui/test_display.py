"""Where an invocation's output goes: the calling cell while it runs, a map's summary, the records and logs()."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import pytest
from IPython.utils.capture import capture_output

from jupyter_faas import function
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.dispatch.platform import MAP_OUTPUT_LINES
from jupyter_faas.record.log import read_invocations
from tests.helpers import outputs, run_cells


@function
def talk(n: int) -> int:
    import logging
    import sys

    for i in range(n):
        print("line", i)
    print("to stderr", file=sys.stderr)
    logging.getLogger("talk").warning("logged %d", n)
    return n


@function
def quiet(x: int) -> int:
    return x


def test_a_calls_output_appears_in_the_calling_cell_under_its_invocation(platform: object) -> None:
    with capture_output() as seen:
        assert talk(2) == 2
    record = talk.invocations[-1]
    assert seen.stdout == f"── talk · {record.id} ──\nline 0\nline 1\n"
    assert seen.stderr == "to stderr\nlogged 2\n"
    assert record.output == "line 0\nline 1\nto stderr\nlogged 2\n"


def test_a_silent_call_prints_nothing(platform: object) -> None:
    with capture_output() as seen:
        assert quiet(3) == 3
    assert seen.stdout == "" and seen.stderr == ""
    assert quiet.invocations[-1].output == ""


class _Watching:
    """A stdout that creates `marker` once it has been written `wanted`."""

    def __init__(self, marker: Path, wanted: str) -> None:
        self.marker, self.wanted, self.text = marker, wanted, ""

    def write(self, text: str) -> int:
        self.text += text
        if self.wanted in self.text:
            self.marker.touch()
        return len(text)

    def flush(self) -> None:
        pass


def test_a_sync_calls_output_streams_into_the_cell_while_it_runs(platform: object, tmp_path: Path) -> None:
    marker = tmp_path / "seen"

    @function(timeout="30s")
    def waits_to_be_seen(path: str) -> bool:
        import os
        import time

        print("first line", flush=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("second line")
        return os.path.exists(path)

    watching = _Watching(marker, "first line\n")
    saved, sys.stdout = sys.stdout, watching  # type: ignore[assignment]
    try:
        # It returns True only if "first line" reached this process's stdout while the call still ran.
        seen_while_running = waits_to_be_seen(str(marker))
    finally:
        sys.stdout = saved
    assert seen_while_running is True
    assert watching.text.endswith("first line\nsecond line\n")


def test_output_past_the_limit_is_cut_with_a_marker(platform: object) -> None:
    @function
    def floods() -> str:
        print("x" * 5000)
        return "done"

    with dask.config.set({"faas.log.max-output": "1KiB"}), capture_output() as seen:
        assert floods() == "done"
    output = floods.invocations[-1].output
    assert output == "x" * 1024 + "\n[output cut: 3,977 more bytes were dropped; faas.log.max-output is 1KiB]\n"
    assert seen.stdout.endswith("x" * 1024)
    assert seen.stderr == "\n[output cut: 3,977 more bytes were dropped; faas.log.max-output is 1KiB]\n"


def test_a_map_shows_the_first_lines_and_points_to_the_rest(platform: object) -> None:
    with capture_output() as seen:
        assert talk.map([3] * 200) == [3] * 200
    lines = seen.stdout.splitlines()
    headers = [line for line in lines if line.startswith("── talk · item ")]
    assert 1 <= len(headers) <= MAP_OUTPUT_LINES
    assert len(lines) - len(headers) - 1 == MAP_OUTPUT_LINES
    # Each invocation wrote 3 lines to stdout and 2 to stderr: 1,000 lines in all.
    assert lines[-1] == (
        f"… {1000 - MAP_OUTPUT_LINES:,} more lines of output from {200 - len(headers):,} more invocations "
        "not shown: see talk.logs(), or talk.invocations[i].output"
    )
    assert seen.stderr == ""


def test_concurrent_invocations_never_mix_their_output(platform: object) -> None:
    @function
    def chatter(tag: int) -> int:
        import time

        for step in range(20):
            print(f"{tag}:{step}")
            time.sleep(0.002)
        return tag

    chatter.map(range(16))
    records = chatter.invocations[-16:]
    for record in records:
        tag = record.output.split(":", 1)[0]
        assert record.output == "".join(f"{tag}:{step}\n" for step in range(20))
    assert sorted(int(record.output.split(":", 1)[0]) for record in records) == list(range(16))


def test_logs_shows_the_newest_outputs_under_headers(platform: object) -> None:
    for n in (1, 2):
        talk(n)
    text = talk.logs(2)
    first, second = talk.invocations[-2:]
    assert text.startswith(f"── talk · {first.id} · ")
    assert f"── talk · {second.id} · " in text and "line 1\n" in text.split(second.id, 1)[1]
    assert repr(text) == str(text)  # shows as text, not as a quoted string
    with pytest.raises(ValueError, match="positive whole number"):
        talk.logs(0)


def test_the_output_is_in_the_durable_log(platform: object, tmp_path: Path) -> None:
    talk(1)
    record = talk.invocations[-1]
    _platform.current().flush_log()
    logged = [r for r in read_invocations(dask.config.get("faas.state-dir"), "talk") if r.id == record.id]
    assert [r.output for r in logged] == ["line 0\nto stderr\nlogged 1\n"]


def test_find_record_returns_any_functions_record_with_its_output(platform: object) -> None:
    talk(1)
    record = talk.invocations[-1]
    assert _platform.current().find_record(record.id) == record
    assert _platform.current().find_record("no-such-id") is None


@pytest.mark.timeout(240)
def test_in_a_real_kernel_the_output_lands_in_the_calling_cell(tmp_path: Path) -> None:
    config = {"faas.state-dir": str(tmp_path / "state")}
    sources = [
        f"import dask\n_ = dask.config.set({config!r})",
        "%load_ext jupyter_faas",
        "%%faas shout word\nimport sys\nprint(word.upper())\nprint('quietly', file=sys.stderr)\nlen(word)",
        "shout('hello')",
        "1 + 1",
    ]
    cells = run_cells(sources, tmp_path, timeout=120).cells
    call, after = cells[3], cells[4]
    assert not outputs(call, "error")
    stdout = "".join(o.text for o in outputs(call, "stream") if o.name == "stdout")
    stderr = "".join(o.text for o in outputs(call, "stream") if o.name == "stderr")
    assert stdout.startswith("── shout · ") and stdout.endswith(" ──\nHELLO\n")
    assert stderr == "quietly\n"
    assert outputs(call, "execute_result")[0].data["text/plain"] == "5"
    # Nothing of it leaks into the next cell.
    assert not outputs(after, "stream")
