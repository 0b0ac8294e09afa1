"""Dead letters: inputs on disk and only an index in memory, bounded by bytes, paged, and robust to damage."""

from __future__ import annotations

import base64
import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

from jupyter_faas.record import deadletters as _deadletters
from jupyter_faas.record.deadletters import DamagedLetter, DeadLetters

ERROR = {"type": "ValueError", "message": "boom"}


@pytest.fixture
def bound() -> Iterator[int]:
    """faas.deadletters.max-bytes set small, as a user would set it."""
    limit = 64 * 2**10
    with dask.config.set({"faas.deadletters.max-bytes": limit}):
        yield limit


def on_disk(path: Path) -> int:
    """Bytes the dead letters take on disk: the index and every input file."""
    folder = path.with_name("dead-letters")
    inputs = sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else 0
    return (path.stat().st_size if path.exists() else 0) + inputs


def old_format_line(letter_id: str, body: bytes | str, content_type: str = "application/json") -> str:
    """A letter as jupyter-faas wrote it up to 9e1b3df: the input inline, in base64."""
    encoded = body if isinstance(body, str) else base64.b64encode(body).decode()
    letter = {
        "id": letter_id,
        "function": "f",
        "version": "v1",
        "failed_at": time.time(),
        "content_type": content_type,
        "body": encoded,
        "error": ERROR,
    }
    return json.dumps(letter) + "\n"


def test_letters_survive_a_restart_with_their_input(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dead-letters.jsonl"
    letters = DeadLetters(path)
    letters.add("a-1", "f", "v1", "application/json", b'{"x": 1}', ERROR)
    letters.add("a-2", "g", "v1", "image/png", b"\x89PNG", ERROR)
    again = DeadLetters(path)
    listed = again.list()
    assert [letter["id"] for letter in listed] == ["a-1", "a-2"]
    assert listed[0]["input"] == {"x": 1}
    assert listed[1]["input"] == {"bytes": 4}
    assert "body" not in listed[1]  # the list is an index; the input stays on disk
    assert again.body("a-2") == b"\x89PNG"
    assert again.remove("a-1") is True
    assert again.remove("a-1") is False
    assert [letter["id"] for letter in DeadLetters(path).list()] == ["a-2"]
    assert not (tmp_path / "state" / "dead-letters" / "a-1.body").exists()


def test_a_line_torn_by_a_crash_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    DeadLetters(path).add("a-1", "f", "v1", "", b"", ERROR)
    with path.open("a") as file:
        file.write('{"id": "a-2", "funct')
    # The next letter starts on a line of its own: the torn one does not swallow it.
    with pytest.warns(UserWarning, match="skipped 1 damaged line"):
        DeadLetters(path).add("a-3", "f", "v1", "", b"", ERROR)
    with pytest.warns(UserWarning, match="skipped 1 damaged line"):
        letters = DeadLetters(path)
    assert [letter["id"] for letter in letters.list()] == ["a-1", "a-3"]
    assert letters.page().skipped == 1


def test_the_list_is_bounded_by_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deadletters, "MAX_DEAD_LETTERS", 3)
    path = tmp_path / "dead-letters.jsonl"
    letters = DeadLetters(path)
    for n in range(5):
        letters.add(f"a-{n}", "f", "v1", "", b"", ERROR)
    assert [letter["id"] for letter in DeadLetters(path).list()] == ["a-2", "a-3", "a-4"]


def test_letters_are_bounded_by_bytes_on_disk_the_oldest_going_first(tmp_path: Path, bound: int) -> None:
    path = tmp_path / "dead-letters.jsonl"
    letters = DeadLetters(path)
    body = os.urandom(10 * 2**10)
    for n in range(40):
        letters.add(f"a-{n}", "f", "v1", "application/octet-stream", body, ERROR)
        assert on_disk(path) <= bound, f"after {n + 1} letters: {on_disk(path)} bytes on disk"
    kept = [letter["id"] for letter in DeadLetters(path).list()]
    assert kept and kept[-1] == "a-39" and "a-0" not in kept
    assert DeadLetters(path).body("a-39") == body
    # One input past the whole bound: the failure is kept, its input is not, and says why.
    big = letters.add("a-big", "f", "v1", "application/octet-stream", os.urandom(bound + 1), ERROR)
    assert "faas.deadletters.max-bytes" in big["input_dropped"]
    with pytest.raises(DamagedLetter, match="faas.deadletters.max-bytes"):
        letters.body("a-big")
    assert on_disk(path) <= bound


def test_letters_of_the_older_format_past_the_bound_are_trimmed_when_loaded(tmp_path: Path, bound: int) -> None:
    path = tmp_path / "dead-letters.jsonl"
    path.write_text("".join(old_format_line(f"a-{n}", os.urandom(16 * 2**10)) for n in range(20)))
    letters = DeadLetters(path)
    assert on_disk(path) <= bound
    kept = [letter["id"] for letter in letters.list()]
    assert kept[-1] == "a-19" and "a-0" not in kept


def test_loading_reads_no_input_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    letters = DeadLetters(path)
    for n in range(20):
        letters.add(f"a-{n}", "f", "v1", "application/octet-stream", os.urandom(2**20), ERROR)
    tracemalloc.start()
    try:
        again = DeadLetters(path)
        listed = again.list()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listed) == 20
    assert peak < 2**20, f"loading 20 letters of 1 MiB took {peak} bytes of memory"


def test_a_damaged_letter_is_skipped_and_reported_and_never_fails_the_list(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    # An index of the older format, one letter of which has bad base64; and a line that is not a letter.
    path.write_text(
        old_format_line("a-1", b'{"x": 1}')
        + old_format_line("a-2", "!!! not base64 !!!")
        + "[1, 2, 3]\n"
        + old_format_line("a-3", b"\x00\x01", "application/octet-stream")
    )
    with pytest.warns(UserWarning, match="skipped 2 damaged line"):
        letters = DeadLetters(path)
    page = letters.page()
    assert [letter["id"] for letter in page.letters] == ["a-1", "a-3"]
    assert page.skipped == 2
    assert letters.body("a-3") == b"\x00\x01"
    # Moved to input files, the index rewritten without them; the damaged lines kept aside, not lost.
    assert "body" not in path.read_text()
    assert "not base64" in path.with_suffix(".damaged").read_text()
    # An input file gone: the letter is listed, flagged, and cannot be replayed.
    (tmp_path / "dead-letters" / "a-3.body").unlink()
    page = DeadLetters(path).page()
    assert page.damaged == ["a-3"]
    assert "missing" in page.letters[1]["damaged"]
    with pytest.raises(DamagedLetter):
        letters.body("a-3")


def test_pages_go_on_from_their_cursor_even_after_the_letters_before_it_are_gone(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "dead-letters.jsonl")
    for n in range(7):
        letters.add(f"a-{n}", "f", "v1", "application/json", b"[]", ERROR)
    first = letters.page(limit=3)
    assert [letter["id"] for letter in first.letters] == ["a-0", "a-1", "a-2"]
    assert first.total == 7 and first.next is not None
    for letter in first.letters:  # replayed or discarded meanwhile
        letters.remove(letter["id"])
    second = letters.page(limit=3, after=first.next)
    assert [letter["id"] for letter in second.letters] == ["a-3", "a-4", "a-5"]
    third = letters.page(limit=3, after=second.next)
    assert [letter["id"] for letter in third.letters] == ["a-6"] and third.next is None
    with pytest.raises(ValueError):
        letters.page(after="not a cursor")
    letters.add("b-1", "g", "v1", "application/json", b"[]", ERROR)
    assert [letter["id"] for letter in letters.page(function="g").letters] == ["b-1"]


def test_processes_sharing_the_files_see_each_others_letters(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    server, kernel = DeadLetters(path), DeadLetters(path)
    kernel.add("k-1", "f", "v1", "application/json", b"[1]", ERROR)
    assert server.body("k-1") == b"[1]"
    server.remove("k-1")
    assert kernel.get("k-1") is None


def test_in_memory_letters() -> None:
    letters = DeadLetters(None)
    letters.add("a-1", "f", "v1", "application/json", b"[1, 2]", ERROR)
    assert letters.list()[0]["input"] == [1, 2]
    assert letters.body("a-1") == b"[1, 2]"
