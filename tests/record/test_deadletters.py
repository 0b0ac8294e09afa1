"""Dead letters: kept with their input, on disk across a restart, bounded, and readable after a torn write."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from jupyter_faas.record import deadletters as _deadletters
from jupyter_faas.record.deadletters import DeadLetters

ERROR = {"type": "ValueError", "message": "boom"}


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
    assert base64.b64decode(again.get("a-2")["body"]) == b"\x89PNG"  # type: ignore[index]
    assert again.remove("a-1") is True
    assert again.remove("a-1") is False
    assert [letter["id"] for letter in DeadLetters(path).list()] == ["a-2"]


def test_a_line_torn_by_a_crash_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    DeadLetters(path).add("a-1", "f", "v1", "", b"", ERROR)
    with path.open("a") as file:
        file.write('{"id": "a-2", "funct')
    with pytest.warns(UserWarning, match="skipped 1 damaged line"):
        letters = DeadLetters(path)
    assert [letter["id"] for letter in letters.list()] == ["a-1"]


def test_the_list_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deadletters, "MAX_DEAD_LETTERS", 3)
    path = tmp_path / "dead-letters.jsonl"
    letters = DeadLetters(path)
    for n in range(5):
        letters.add(f"a-{n}", "f", "v1", "", b"", ERROR)
    assert [letter["id"] for letter in DeadLetters(path).list()] == ["a-2", "a-3", "a-4"]


def test_in_memory_letters() -> None:
    letters = DeadLetters(None)
    letters.add("a-1", "f", "v1", "application/json", b"[1, 2]", ERROR)
    assert letters.list()[0]["input"] == [1, 2]
