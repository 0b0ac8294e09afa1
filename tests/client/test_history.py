"""The durable log through the platform: every invocation is saved, and read back across restarts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import jupyter_faas
from jupyter_faas import function
from jupyter_faas.dispatch.platform import Platform


@function
def triple(x: int) -> int:
    return 3 * x


def test_every_invocation_is_in_the_durable_log(platform: Platform) -> None:
    began = time.time()
    triple.map(range(50))
    with pytest.raises(TypeError):
        triple("a", "b")  # does not fit the signature: refused before it is sent, so no record
    saved = jupyter_faas.invocations(function="triple", since=began)
    assert len(saved) == 50
    assert [r.id for r in saved] == [r.id for r in triple.invocations[-50:]]
    assert saved[-1].status == "ok" and saved[-1].memory_limit == triple.limits.memory
    assert jupyter_faas.invocations(function="triple", since=began, limit=5) == saved[-5:]


def test_records_survive_a_platform_restart(own_platform: Callable[..., Platform], tmp_path: Path) -> None:
    state = {"faas.state-dir": str(tmp_path / "state")}
    first = own_platform(state)
    triple.map(range(7))
    ids = [r.id for r in triple.invocations[-7:]]
    first.shutdown()
    # A new platform (as after a kernel restart) reads what the old one saved.
    own_platform(state)
    assert [r.id for r in jupyter_faas.invocations(function="triple")] == ids
    triple(1)
    assert len(jupyter_faas.invocations(function="triple")) == 8


def test_a_state_dir_that_cannot_hold_the_log_is_a_warning_not_a_dead_platform(
    own_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="invocations are not being saved to"):
        own_platform({"faas.state-dir": str(blocker)})
    assert triple(2) == 6


def test_the_log_can_be_turned_off(own_platform: Callable[..., Platform], tmp_path: Path) -> None:
    own_platform({"faas.state-dir": str(tmp_path / "off"), "faas.log.enabled": False})
    assert triple(3) == 9
    assert jupyter_faas.invocations() == []
    assert not (tmp_path / "off").exists()
