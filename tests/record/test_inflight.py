"""The journal of accepted asynchronous invocations: written before the 202, gone once settled, kept over a crash."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_faas.record.inflight import InFlight


def test_an_entry_lives_from_begin_to_end_and_is_private(tmp_path: Path) -> None:
    journal = InFlight(tmp_path / "in-flight")
    journal.begin("ab12-7", "square", "v1", "application/json", b'{"x": 2}')
    (path,) = (tmp_path / "in-flight").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["function"] == "square"
    assert journal.orphans() == []  # this process still runs: it will settle its own
    journal.end("ab12-7")
    journal.end("ab12-7")  # ending twice is harmless
    assert list((tmp_path / "in-flight").iterdir()) == []


def test_entries_of_a_process_that_died_are_orphans(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from jupyter_faas.record.inflight import InFlight; "
        "InFlight(Path(sys.argv[1])).begin('cd34-1', 'nap', 'v2', 'text/plain', b'raw \\xff body')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in-flight")], check=True)
    (orphan,) = InFlight(tmp_path / "in-flight").orphans()
    assert (orphan["id"], orphan["function"], orphan["version"]) == ("cd34-1", "nap", "v2")
    assert orphan["content_type"] == "text/plain" and orphan["body"] == b"raw \xff body"


def test_a_half_written_entry_is_skipped_and_odd_ids_are_refused(tmp_path: Path) -> None:
    journal = InFlight(tmp_path / "in-flight")
    (tmp_path / "in-flight" / "broken.json").write_text('{"id": "x", "pi')
    assert journal.orphans() == []
    with pytest.raises(ValueError, match="not an invocation id"):
        journal.begin("../escape", "f", "v", "", b"")


def test_without_a_state_dir_nothing_is_written(tmp_path: Path) -> None:
    journal = InFlight(None)
    journal.begin("ab-1", "f", "v", "", b"")
    journal.end("ab-1")
    assert journal.orphans() == []


def test_a_file_events_source_is_kept_and_a_damaged_entry_never_stops_a_restart(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from jupyter_faas.record.inflight import InFlight; "
        "InFlight(Path(sys.argv[1])).begin('ef56-1', 'size', 'v1', 'application/json', b'[\"/in/a.bin\"]', "
        "{'trigger': 'file', 'path': '/in/a.bin'})"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in-flight")], check=True)
    damaged = json.loads((tmp_path / "in-flight" / "ef56-1.json").read_text())
    damaged.update(id="ef56-2", body="!!! not base64 !!!")
    (tmp_path / "in-flight" / "ef56-2.json").write_text(json.dumps(damaged))
    (orphan,) = InFlight(tmp_path / "in-flight").orphans()
    assert orphan["id"] == "ef56-1" and orphan["source"] == {"trigger": "file", "path": "/in/a.bin"}
