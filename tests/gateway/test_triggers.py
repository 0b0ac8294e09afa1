"""Schedules, file drops and the queue, on the real platform: fired once, recorded, and kept across a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dask
import pytest

from jupyter_faas.client import deploy as _deploy
from jupyter_faas.client.function import FaasFunction
from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import from_cell
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import TriggerError
from jupyter_faas.gateway.service import Endpoints
from jupyter_faas.gateway.triggers import TriggerSpec, TriggerStore, file_spec, next_time, schedule_spec
from jupyter_faas.record.deadletters import DeadLetters, dead_letters_path
from jupyter_faas.record.registry import Registry
from tests.helpers import wait_for


class Owner:
    """What the server extension or serve runs: a registry, endpoints and their trigger runner, on one state dir."""

    def __init__(self, platform: Platform, state: Path) -> None:
        self.platform = platform
        self.state = state
        self.registry = Registry(state / "registry")
        self.store = TriggerStore(state / "triggers")
        self.endpoints = Endpoints(platform, self.registry, state)
        self.endpoints.start_triggers(self.store)
        _deploy.serve_here(self.registry, "http://test/", self.store)

    def close(self) -> None:
        _deploy.serve_here(None)
        self.endpoints.close()

    def records(self, name: str, trigger: str) -> list[Any]:
        return [r for r in self.platform.records(name) if r.trigger == trigger]

    def count(self, function: str, what: str) -> int:
        """`what` ("done", "failed", ...) of the function's running trigger; 0 until the runner has it."""
        entry = next((t for t in self.endpoints.trigger_list() if t["function"] == function), {})
        return entry.get(what, 0)


@pytest.fixture
def owner(platform: Platform, tmp_path: Path) -> Iterator[Owner]:
    made = Owner(platform, tmp_path / "state")
    try:
        yield made
    finally:
        made.close()


def define(source: str, name: str, params: list[str] | None = None, **limits: Any) -> FaasFunction:
    return FaasFunction(from_cell(source, {}, Limits.resolve(**limits), name=name, params=params or []))


# -- schedules -----------------------------------------------------------------------------------------


def test_a_schedule_fires_and_a_function_without_parameters_gets_none(owner: Owner) -> None:
    tick = define("'tick'", "tick_none")
    spec = tick.schedule(every="1s")
    assert spec["description"] == "every 1 s"
    wait_for(lambda: len(owner.records("tick_none", "schedule")) >= 2, timeout=30, message="two ticks")
    assert all(r.status == "ok" for r in owner.records("tick_none", "schedule"))
    assert tick.unschedule() is True
    assert tick.unschedule() is False


def test_a_function_with_a_parameter_gets_the_scheduled_time(owner: Owner, tmp_path: Path) -> None:
    out = tmp_path / "times.txt"
    stamp = define(f"open({str(out)!r}, 'a').write(when.isoformat() + chr(10))", "stamp", ["when"])
    stamp.schedule(every="1s")
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 1, timeout=30, message="a tick")
    stamp.unschedule()
    first = datetime.fromisoformat(out.read_text().splitlines()[0])
    assert first.utcoffset() is not None and first.utcoffset().total_seconds() == 0
    assert abs(first.timestamp() - time.time()) < 30


@pytest.mark.parametrize(
    ("every", "cron", "message"),
    [
        (None, None, "give one of every"),
        ("1s", "* * * * *", "give one of every"),
        ("10ms", None, "every"),
        (None, "every minute", "is not a cron expression"),
    ],
)
def test_bad_schedules_are_clear_errors(every: Any, cron: Any, message: str) -> None:
    with pytest.raises(TriggerError, match=message):
        schedule_spec("f", every=every, cron=cron)


def test_ticks_stay_on_their_grid_and_missed_ones_are_skipped() -> None:
    spec = TriggerSpec("schedule", "f", every=10.0, created=1000.0)
    assert next_time(spec, 1000.0) == 1010.0
    assert next_time(spec, 1015.0) == 1020.0
    # Down from 1021 to 1075: the next tick is the first after now, 1080; 1030..1070 are not replayed.
    assert next_time(spec, 1075.0) == 1080.0
    cron = TriggerSpec("schedule", "f", cron="*/5 * * * *", created=0.0)
    assert next_time(cron, datetime(2026, 1, 1, 12, 1).timestamp()) % 300 == 0


# -- file drops ----------------------------------------------------------------------------------------


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Write then rename, as a well-behaved producer does."""
    temporary = folder / f".{name}.part"
    temporary.write_bytes(data)
    final = folder / name
    os.replace(temporary, final)
    return final


def test_every_file_is_handled_once_those_there_before_and_new_ones(owner: Owner, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "before.txt", b"1")
    drop(inbox, "ignored.png", b"x")
    seen = define("open(path).read()", "read_file", ["path"])
    seen.on_file(inbox, pattern="*.txt")
    for n in range(3):
        drop(inbox, f"new{n}.txt", str(n).encode())
    wait_for(lambda: len(owner.records("read_file", "file")) == 4, timeout=30, message="four files")
    wait_for(lambda: owner.count("read_file", "files_done") == 4, timeout=10, message="four marked done")
    assert owner.count("read_file", "kind") == "file"
    assert len(owner.records("read_file", "file")) == 4  # the .png never ran, and nothing ran twice


def test_a_bytes_parameter_gets_the_file_contents(owner: Owner, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "sizes.txt"
    size = define(f"open({str(out)!r}, 'a').write(str(len(data)) + chr(10))", "size_of", ["data:bytes"])
    size.on_file(inbox)
    drop(inbox, "blob.bin", b"\x00" * 1234)
    wait_for(lambda: out.exists() and out.read_text().split() == ["1234"], timeout=30, message="the bytes")


def test_links_in_a_watched_folder_are_never_followed(owner: Owner, tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "private"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside-secret")
    (inbox / "inner.dat").write_bytes(b"inside-target")
    out = tmp_path / "seen.txt"
    keep = define(f"open({str(out)!r}, 'ab').write(data + bytes([10]))", "keep_file", ["data:bytes"])
    # A link out of the folder, and one to a file inside it: neither is taken (links are skipped).
    (inbox / "leak.txt").symlink_to(outside / "secret.txt")
    (inbox / "inner.txt").symlink_to(inbox / "inner.dat")
    keep.on_file(inbox, pattern="*.txt")
    drop(inbox, "plain.txt", b"plain")
    wait_for(lambda: owner.count("keep_file", "files_done") >= 1, timeout=30, message="the plain file")
    drop(inbox, "zlast.txt", b"last")  # scanned after the links, in name order: they had their chance
    wait_for(lambda: b"last" in out.read_bytes().split(), timeout=30, message="the last file")
    assert b"outside-secret" not in out.read_bytes()
    assert sorted(out.read_bytes().split()) == [b"last", b"plain"]
    assert owner.count("keep_file", "files_failed") == 0
    assert len(owner.records("keep_file", "file")) == 2


def test_a_file_past_the_call_limit_is_dead_lettered_unread_and_never_run(owner: Owner, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sized = define("len(data)", "sized", ["data:bytes"])
    with dask.config.set({"faas.call.max-bytes": 1024}):
        sized.on_file(inbox)
        drop(inbox, "fits.bin", b"x" * 900)
        drop(inbox, "over.bin", b"x" * 1025)
        # Within the limit on disk, past it once serialized with the call: refused the same way.
        drop(inbox, "edge.bin", b"x" * 1020)
        done = ("files_done", "files_failed")
        wait_for(lambda: sum(owner.count("sized", what) for what in done) == 3, 30, "all three")
    assert len(owner.records("sized", "file")) == 1  # the files past the limit never ran
    assert owner.count("sized", "files_failed") == 2
    letters = {Path(letter["source"]["path"]).name: letter for letter in owner.endpoints.dead_letters.list()}
    assert set(letters) == {"over.bin", "edge.bin"}
    assert all(letter["error"]["type"] == "InputRefused" for letter in letters.values())
    over = letters["over.bin"]["error"]["message"]
    assert "over.bin is 1025 bytes; the limit is faas.call.max-bytes = 1024 bytes" in over
    assert "the limit is faas.call.max-bytes = 1KiB" in letters["edge.bin"]["error"]["message"]


def test_nothing_is_handled_twice_or_skipped_across_a_restart(platform: Platform, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "handled.txt"
    source = f"open({str(out)!r}, 'a').write(path.rsplit('/', 1)[1] + chr(10))"
    first = Owner(platform, tmp_path / "state")
    try:
        define(source, "handle", ["path"]).on_file(inbox)
        drop(inbox, "a.txt", b"a")
        drop(inbox, "b.txt", b"b")
        wait_for(lambda: out.exists() and len(out.read_text().split()) == 2, timeout=30, message="a and b")
        wait_for(lambda: first.count("handle", "files_done") == 2, timeout=10, message="both marked done")
    finally:
        first.close()
    # While nothing watches, a file lands; after the restart it is handled, and a and b are not again.
    drop(inbox, "c.txt", b"c")
    second = Owner(platform, tmp_path / "state")
    try:
        wait_for(lambda: len(out.read_text().split()) == 3, timeout=30, message="c after the restart")
        drop(inbox, "d.txt", b"d")
        wait_for(lambda: len(out.read_text().split()) == 4, timeout=30, message="d")
        wait_for(lambda: second.count("handle", "files_done") == 4, timeout=10, message="four marked done")
    finally:
        second.close()
    assert sorted(out.read_text().split()) == ["a.txt", "b.txt", "c.txt", "d.txt"]


def test_a_failed_file_is_a_dead_letter_and_is_not_retried_after_a_restart(platform: Platform, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = Owner(platform, tmp_path / "state")
    try:
        define("raise ValueError(path)", "refuse", ["path"], retries="1").on_file(inbox)
        bad = drop(inbox, "bad.txt", b"?")
        wait_for(lambda: first.count("refuse", "files_failed") == 1, timeout=30, message="the failure")
        assert first.count("refuse", "failed") == 1
        letters = first.endpoints.dead_letters.list()
        assert [letter["function"] for letter in letters] == ["refuse"]
        assert letters[0]["input"] == [str(bad)]
        assert letters[0]["error"]["type"] == "ValueError"
        assert [r.attempts for r in platform.records("refuse") if r.trigger == "file"] == [2]
    finally:
        first.close()
    second = Owner(platform, tmp_path / "state")
    try:
        # bad.txt, failed before the restart, is not run again; a later drop runs, and fails on its own.
        drop(inbox, "later.txt", b"?")
        wait_for(lambda: second.count("refuse", "files_failed") == 2, timeout=30, message="the later drop")
        assert second.count("refuse", "failed") == 1
    finally:
        second.close()
    assert len([r for r in platform.records("refuse") if r.trigger == "file"]) == 2


def test_a_folder_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TriggerError, match="is not a folder; create it first"):
        file_spec("f", tmp_path / "missing")


# -- the queue -----------------------------------------------------------------------------------------


def test_enqueue_returns_at_once_and_records_a_queue_invocation(platform: Platform) -> None:
    square = define("x * x", "square_queued", ["x"])
    invocation_id = square.enqueue(7)
    wait_for(lambda: any(r.id == invocation_id for r in square.invocations), timeout=30, message="the record")
    record = next(r for r in square.invocations if r.id == invocation_id)
    assert (record.trigger, record.status) == ("queue", "ok")


def test_a_queued_invocation_that_still_fails_after_retries_is_a_dead_letter(platform: Platform) -> None:
    fails = define("raise KeyError(key)", "fails_queued", ["key"], retries="2")
    state = Path(dask.config.get("faas.state-dir"))
    invocation_id = fails.enqueue("k")

    def letter() -> Any:
        # Read as a fresh process would: the kernel wrote it, not this process's endpoints.
        return DeadLetters(dead_letters_path(state)).get(invocation_id)

    found = wait_for(letter, timeout=30, message="the dead letter")
    assert found["function"] == "fails_queued"
    assert found["error"]["type"] == "KeyError"
    record = next(r for r in fails.invocations if r.id == invocation_id)
    assert (record.trigger, record.attempts) == ("queue", 3)


# -- where triggers live -------------------------------------------------------------------------------


def test_triggers_lists_what_is_set(owner: Owner, tmp_path: Path) -> None:
    import jupyter_faas

    inbox = tmp_path / "in"
    inbox.mkdir()
    fn = define("1", "listed")
    fn.schedule(cron="*/5 * * * *")
    fn.on_file(inbox, pattern="*.csv")
    listed = {t["id"]: t for t in jupyter_faas.triggers()}
    assert listed["listed.schedule"]["cron"] == "*/5 * * * *"
    assert listed["listed.file"]["pattern"] == "*.csv"
    assert listed["listed.file"]["files_done"] == 0
    fn.unschedule()
    fn.off_file()
    assert jupyter_faas.triggers() == []


def test_without_a_server_triggers_say_how_to_get_one(tmp_path: Path) -> None:
    # A plain Python process that never loaded the extension (this one did: in a kernel, a trigger starts the
    # kernel's own gateway instead, see tests/gateway/test_inkernel.py).
    code = (
        "from jupyter_faas import function\n"
        "@function\n"
        "def lonely_trigger() -> int:\n"
        "    return 1\n"
        "lonely_trigger.schedule(every='1s')\n"
    )
    env = {**os.environ, "DASK_FAAS__STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "jupyter faas serve NOTEBOOK.ipynb" in done.stderr, done.stderr[-2000:]


def test_the_card_shows_what_fires_the_function(owner: Owner, tmp_path: Path) -> None:
    from jupyter_faas.ui.widgets import function_text

    fn = define("1", "shown")
    assert "runs" not in function_text(fn)
    fn.schedule(every="1 minute")
    assert "runs every 60 s" in function_text(fn)
    # The function's own card: it hands the card what fires it.
    card = fn.card
    card.refresh()
    assert "runs every 60 s" in card.header.value
    fn.unschedule()
