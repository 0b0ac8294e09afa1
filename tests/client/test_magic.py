"""%%faas and %faas driven through a real IPython shell."""

from __future__ import annotations

import dask
import pytest
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasFunction
from jupyter_faas.client.magic import split_line
from tests.helpers import run_ok


def usage_error(shell: InteractiveShell, cell: str) -> str:
    result = shell.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


def test_form_one_binds_the_function_in_the_notebook(shell: InteractiveShell, platform: object) -> None:
    run_ok(
        shell, "%%faas word_count text min_len=1\nwords = [w for w in text.split() if len(w) >= min_len]\nlen(words)"
    )
    assert isinstance(shell.user_ns["word_count"], FaasFunction)
    assert run_ok(shell, 'word_count("a bb ccc", min_len=2)') == 2


def test_form_two_with_imports_and_a_rename(shell: InteractiveShell, platform: object) -> None:
    run_ok(shell, "%%faas\nimport hashlib\ndef sha(data: bytes) -> str:\n    return hashlib.sha256(data).hexdigest()")
    assert run_ok(shell, "sha(b'abc')[:8]") == "ba7816bf"
    assert "hashlib" not in shell.user_ns  # the cell's imports belong to the function, not the notebook
    run_ok(shell, "%%faas other_name\ndef double(x):\n    return 2 * x")
    assert run_ok(shell, "other_name(21)") == 42
    assert "double" not in shell.user_ns


def test_the_stateless_counter(shell: InteractiveShell, platform: object) -> None:
    run_ok(shell, "counter = 0")
    run_ok(shell, "%%faas bump\nglobal counter\ncounter += 1\nreturn counter")
    assert (
        run_ok(shell, "[bump() for _ in range(5)] + [f.result() for f in [bump.submit() for _ in range(20)]]")
        == [1] * 25
    )
    assert shell.user_ns["counter"] == 0


def test_captured_by_value_until_the_cell_runs_again(shell: InteractiveShell, platform: object) -> None:
    run_ok(shell, "factor = 2")
    cell = "%%faas scale x\nx * factor"
    run_ok(shell, cell)
    run_ok(shell, "factor = 10")
    assert run_ok(shell, "scale(3)") == 6
    run_ok(shell, cell)
    assert run_ok(shell, "scale(3)") == 30


def test_undefined_names_are_a_usage_error_naming_them_all(shell: InteractiveShell) -> None:
    message = usage_error(shell, "%%faas word_count text\nfoo + bar + len(text)")
    assert message == "word_count uses undefined names: bar, foo"
    assert "word_count" not in shell.user_ns


def test_no_def_and_no_name_says_what_to_write(shell: InteractiveShell) -> None:
    assert "%%faas NAME [params]" in usage_error(shell, "%%faas\n1 + 1")
    assert "name the one to run, e.g. %%faas a" in usage_error(shell, "%%faas\ndef a():\n    pass\ndef b():\n    pass")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("f --timeout abc", "--timeout: expected a duration like 30s, 500ms or '2 minutes', got 'abc'"),
        ("f --memory lots", "--memory: expected a size like 256MB or 1GiB, got 'lots'"),
        ("f --memory 1MB", "--memory: expected a size like 256MB or 1GiB, at least 64MiB; got '1MB'"),
        ("f --retries -1", "--retries: expected a whole number of at least 0, got '-1'"),
        ("f --concurrency 0", "--concurrency: expected a whole number of at least 1, got '0'"),
        ("f --speed 3", "unrecognized arguments: --speed 3"),
        ("f x=", "cannot read the parameters 'x='"),
        ("9lives", "'9lives' is not a valid function name"),
        ("__builtins__", "names like __x__ belong to Python"),
        ("class", "'class' is a Python keyword"),
        ('f greeting="unterminated', 'unterminated " quote'),
        ("f xs=[1, 2", "unclosed bracket"),
    ],
)
def test_a_bad_magic_line_is_one_clear_usage_error(shell: InteractiveShell, line: str, message: str) -> None:
    assert message in usage_error(shell, f"%%faas {line}\n1")


def test_a_def_named_like_a_python_internal_is_refused_and_the_shell_keeps_working(shell: InteractiveShell) -> None:
    assert "names like __x__ belong to Python" in usage_error(shell, "%%faas\ndef __builtins__():\n    pass")
    assert run_ok(shell, "1 + 1") == 2


def test_names_are_normalized_as_python_reads_them(shell: InteractiveShell) -> None:
    run_ok(shell, "%%faas \ufb01le\n1")  # the ligature "fi" reads as "file"
    assert isinstance(shell.user_ns["file"], FaasFunction)


def test_options_set_the_limits(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run_ok(shell, '%%faas f x --timeout "2 minutes" --memory 512MB --retries 2 --concurrency 3\nx')
    limits = shell.user_ns["f"].limits
    assert (limits.timeout, limits.memory, limits.retries, limits.concurrency) == (120.0, 512 * 10**6, 2, 3)
    assert "f(x) is a serverless function" in capsys.readouterr().out


def test_a_remote_error_shows_the_cells_traceback(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], platform: object
) -> None:
    run_ok(shell, "%%faas boom x\na = 1\nraise ValueError(f'bad {x}')")
    capsys.readouterr()
    result = shell.run_cell("boom(3)")
    assert isinstance(result.error_in_exec, ValueError)
    shown = capsys.readouterr().out
    assert 'File "<faas-cell boom>", line 3, in boom' in shown
    assert "raise ValueError(f'bad {x}')" in shown
    assert "ValueError: bad 3" in shown
    assert "_function.py" not in shown and "concurrent" not in shown


def test_faas_config_sets_and_validates(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    before = dask.config.get("faas.cluster.idle-timeout")
    try:
        run_ok(shell, "%faas config cluster.idle-timeout=5s")
        assert dask.config.get("faas.cluster.idle-timeout") == "5s"
        assert "faas.cluster.idle-timeout = '5s'" in capsys.readouterr().out
        assert "at least 1s" in usage_error(shell, "%faas config cluster.idle-timeout=10ms")
        assert dask.config.get("faas.cluster.idle-timeout") == "5s"
        assert "unknown config key" in usage_error(shell, "%faas config cluster.colour=red")
        assert "expected key=value" in usage_error(shell, "%faas config idle")
        run_ok(shell, "%faas config")
        assert "faas.defaults.memory = '256MB'" in capsys.readouterr().out
    finally:
        dask.config.set({"faas.cluster.idle-timeout": before})


def test_line_magic_status_and_unknown_commands(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run_ok(shell, "%faas")
    assert "jupyter_faas platform" in capsys.readouterr().out
    assert "unknown command 'launch'" in usage_error(shell, "%faas launch")


def test_split_line_keeps_quotes_and_brackets_together() -> None:
    assert split_line('f greeting="hello world" xs=[1, 2] --timeout "2 minutes"') == [
        "f", 'greeting="hello world"', "xs=[1, 2]", "--timeout", '"2 minutes"',
    ]  # fmt: skip
    assert split_line("  word_count   text  min_len=1 ") == ["word_count", "text", "min_len=1"]
    assert split_line(r"f s='it\'s'") == ["f", r"s='it\'s'"]


@given(st.lists(st.from_regex(r"[A-Za-z0-9_=:.\-]+", fullmatch=True), max_size=8))
def test_split_line_round_trips_plain_tokens(tokens: list[str]) -> None:
    assert split_line(" ".join(tokens)) == tokens


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc")), max_size=60))
def test_any_magic_line_defines_or_is_one_usage_error(line: str) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_faas")
    result = shell.run_cell(f"%%faas {line}\n1")
    assert result.success or isinstance(result.error_in_exec, UsageError), repr(result.error_in_exec)


def test_zones_on_the_magic_line(shell: InteractiveShell) -> None:
    run_ok(shell, "%%faas spread x --zones 2\nx")
    assert shell.user_ns["spread"].limits.zones == 2
    assert "zones 2" in shell.user_ns["spread"].limits.describe()
    with pytest.raises(UsageError, match="--zones"):
        shell.run_cell_magic("faas", "spread x --zones 0", "x")


def test_a_missing_requirement_fails_the_definition_with_the_install_command(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match=r"needs no-such-faas-package>=1 \(not installed\).*pip install 'no-such-faas"):
        shell.run_cell_magic("faas", "needy x --requirements 'no-such-faas-package>=1'", "x")
    with pytest.raises(UsageError, match=r"cloudpickle>=999 \(\d+\.\d+\.\d+ is installed\)"):
        shell.run_cell_magic("faas", "needy x --requirements cloudpickle>=999", "x")
    with pytest.raises(UsageError, match="is not a pip requirement"):
        shell.run_cell_magic("faas", "needy x --requirements 'pillow>>10'", "x")
    run_ok(shell, "%%faas needy x --requirements cloudpickle>=1 dask\nx")
    assert shell.user_ns["needy"]._definition.requirements == ("cloudpickle>=1", "dask")
