"""Hypothesis fuzz of the %%faas line in a real IPython shell, and of every faas.* config value: a bad input is
one UsageError or ConfigError with a clear message, never another exception."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import config as _config
from jupyter_faas.client import deploy as _deploy
from jupyter_faas.gateway.triggers import TriggerStore
from jupyter_faas.record.registry import Registry
from tests.helpers import faas_shell

# Examples per test; FAAS_FUZZ_LOCAL_EXAMPLES=20000 is the full run.
EXAMPLES = int(os.environ.get("FAAS_FUZZ_LOCAL_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Nothing that ends a line: the rest would be the cell, not the magic line.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
one_line_text = st.text(
    alphabet=st.characters(blacklist_characters=_LINE_BREAKS, blacklist_categories=("Cs",)), max_size=30
)
OPTIONS = [
    "--timeout", "--memory", "--retries", "--concurrency", "--zones", "--requirements", "--http", "--every",
    "--cron", "--on-file", "--pattern", "--", "-", "-h", "--help", "--time", "--nope", "--rate", "--quota",
]  # fmt: skip
VALUES = [
    "0", "-1", "1", "1.5", "1e400", "-1e400", "nan", "inf", "-inf", "NaN", "1" * 5000, "9" * 400, "30s", "1ms",
    "2 minutes", "256MB", "1GiB", "0B", "1TB", "unlimited", "none", "''", '""', "'", '"', "[", "]", "(", "{}",
    "x=", "x=[1,", "**k", "*a", "x:int", "x:", ":int", "x=1", "x=__import__('os')", "/", "/tmp", "~", ".",
    "*/5 * * * *", "* * *", "61 * * * *", "\x00", "\t", "é", "ﬁle", "class", "__x__", "a-b", "9lives",
    "pillow>=10", "pillow>>10", "x\x00y", "\\", "'\\'", "%", "$HOME", "λ", "🐍",
]  # fmt: skip
value = st.one_of(st.sampled_from(VALUES), one_line_text, one_line_text.map(repr))
token = st.one_of(
    st.tuples(st.sampled_from(OPTIONS), value).map(" ".join),  # an option with a value, the likeliest mistake
    st.sampled_from(OPTIONS),
    value,
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(:(int|str|bytes|float))?(=[0-9]{1,3})?", fullmatch=True),
)
magic_line = st.one_of(
    st.lists(token, max_size=8).map(" ".join),
    st.tuples(st.from_regex(r"f[a-z]{0,3}", fullmatch=True), st.lists(token, max_size=6)).map(
        lambda parts: " ".join([parts[0], *parts[1]])
    ),
    one_line_text,
)
CELLS = ["1", "x", "def f(x):\n    return x", "def f(x):\n    return x\ndef g():\n    pass", "async def f():\n    pass"]


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    """The real IPython shell, once for the module (hypothesis runs many examples in one test)."""
    with faas_shell() as ip:
        yield ip


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Deploys and triggers go to a registry and trigger store of the test's own, as in a kernel of a server;
    nothing runs them. So --http, --every and --on-file get as far as they can."""
    folder = tmp_path_factory.mktemp("magic-serving")
    _deploy.serve_here(Registry(folder / "registry"), "http://127.0.0.1:1/", TriggerStore(folder / "triggers"))
    try:
        yield folder
    finally:
        _deploy.serve_here(None)


@pytest.fixture
def restore_config() -> Iterator[Callable[[], None]]:
    """Puts back the suite's faas.* config, whatever a fuzzed `%faas config` set: after each example, and at the end."""
    saved = copy.deepcopy(dask.config.config["faas"])

    def restore() -> None:
        dask.config.config["faas"] = copy.deepcopy(saved)

    try:
        yield restore
    finally:
        restore()


def outcome(shell: InteractiveShell, source: str) -> BaseException | None:
    result = shell.run_cell(source, store_history=False)
    return result.error_before_exec or result.error_in_exec


@FUZZ
@given(line=magic_line, cell=st.sampled_from(CELLS))
def test_any_magic_line_defines_a_function_or_is_one_usage_error(
    shell: InteractiveShell, serving: Path, capsys: pytest.CaptureFixture[str], line: str, cell: str
) -> None:
    error = outcome(shell, f"%%faas {line}\n{cell}")
    shown = capsys.readouterr()
    event("defined" if error is None else f"{type(error).__name__}: {' '.join(str(error).split()[:2])[:30]}")
    assert error is None or isinstance(error, UsageError), f"{type(error).__name__}: {error}"
    if error is not None:
        assert str(error).strip()
        assert "Traceback" not in shown.out + shown.err


@FUZZ
@given(
    option=st.sampled_from(
        [
            "--timeout",
            "--memory",
            "--retries",
            "--concurrency",
            "--zones",
            "--requirements",
            "--every",
            "--cron",
            "--on-file",
            "--pattern",
            "--http --on-file",
            "--http --rate",
            "--http --quota",
            "--every 1s --cron",
        ]
    ),
    text=value,
)
@example(option="--on-file", text="a\x00b")  # found by this test: a ValueError from pathlib, not a UsageError
@example(option="--on-file", text="~no_such_user_here/x")  # RuntimeError from expanduser
@example(option="--timeout", text="1" * 5000)  # OverflowError from dask's parse_timedelta
def test_any_option_value_is_taken_or_is_one_usage_error(
    shell: InteractiveShell, serving: Path, capsys: pytest.CaptureFixture[str], option: str, text: str
) -> None:
    error = outcome(shell, f"%%faas f x {option} {text}\nx")
    shown = capsys.readouterr()
    event("taken" if error is None else type(error).__name__)
    assert error is None or isinstance(error, UsageError), f"{type(error).__name__}: {error}"
    assert "Traceback" not in shown.out + shown.err


@FUZZ
@given(
    line=st.one_of(
        st.tuples(st.sampled_from(["config", "config faas.", "config cluster.", "config defaults."]), token).map(
            " ".join
        ),
        st.tuples(st.sampled_from(_config.KNOWN_KEYS), st.sampled_from(VALUES)).map(
            lambda kv: f"config {kv[0]}={kv[1]}"
        ),
        one_line_text.filter(lambda text: text.split()[:1] not in ([], ["shutdown"])),
    )
)
def test_any_line_magic_is_done_or_is_one_usage_error(
    shell: InteractiveShell, restore_config: Callable[[], None], capsys: pytest.CaptureFixture[str], line: str
) -> None:
    try:
        error = outcome(shell, f"%faas {line}")
    finally:
        restore_config()
    shown = capsys.readouterr()
    event("done" if error is None else type(error).__name__)
    assert error is None or isinstance(error, UsageError), f"{type(error).__name__}: {error}"
    assert "Traceback" not in shown.out + shown.err


config_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**300, max_value=10**400),
        st.floats(),
        st.sampled_from(VALUES),
        one_line_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["module", "class", "kwargs", "x"]), children)
    ),
    max_leaves=6,
)


@FUZZ
@given(key=st.sampled_from(_config.KNOWN_KEYS), value=config_value)
def test_any_config_value_is_accepted_or_one_config_error_naming_its_key(key: str, value: Any) -> None:
    with dask.config.set({key: value}):
        try:
            _config.validate_all()
            _config.pricing()
            _config.function_defaults()
        except _config.ConfigError as e:
            event("ConfigError")
            assert key in str(e), str(e)
        else:
            event("accepted")


@FUZZ
@given(
    key=st.one_of(st.sampled_from(_config.KNOWN_KEYS), one_line_text),
    raw=st.one_of(st.sampled_from(VALUES), one_line_text),
)
def test_any_config_assignment_is_set_or_one_config_error(
    restore_config: Callable[[], None], key: str, raw: str
) -> None:
    try:
        _config.set_value(key, raw)
    except _config.ConfigError as e:
        event("ConfigError")
        assert str(e).strip()
    else:
        event("set")
    finally:
        restore_config()
