"""--lang bash: the cell is a script; its parameters are environment variables and positional arguments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_faas import FaasFunction
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import FaasMemoryError, FaasTimeout, RuntimeFailure, ScriptExit
from tests.helpers import faas_shell, run_ok

CELLS = {
    "count_lines": '%%faas count_lines path --lang bash\nwc -l < "$path"',
    "args": '%%faas args first second=3 --lang bash\nprintf "%s|%s|%s|%s\\n\\n" "$first" "$second" "$1" "$2"',
    "fail": '%%faas fail code --lang bash\necho "working on it" >&2\necho "it broke: $code" >&2\nexit "$code"',
    "sleepy": "%%faas sleepy --lang bash --timeout 2s\nsleep 30",
    "hog": "%%faas hog --lang bash --memory 150MB\nbig=$(head -c 400000000 /dev/zero | tr '\\0' a)\necho ${#big}",
    "leave": '%%faas leave --lang bash\ncd /\numask 077\nexport LEFT=1\nLOCAL=2\necho "$PWD ${LEFT:-unset}"',
    "seen": '%%faas seen --lang bash\necho "${LEFT:-unset} ${LOCAL:-unset} $(umask)"',
    "kill_runner": "%%faas kill_runner --lang bash\nkill -9 $PPID",
    # Every file the runner holds open, overwritten: the requests and answers pipes included.
    "meddle": "%%faas meddle --lang bash\nfor fd in /proc/$$/fd/*; do echo '9 9' > \"$fd\" 2>/dev/null; done\necho ok",
}


@pytest.fixture(scope="module")
def sh() -> Iterator[dict[str, FaasFunction]]:
    with faas_shell() as shell:
        for cell in CELLS.values():
            run_ok(shell, cell)
        yield {name: shell.user_ns[name] for name in CELLS}


def test_the_result_is_stdout_without_its_trailing_newline(
    sh: dict[str, FaasFunction], platform: Platform, tmp_path: Path
) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert sh["count_lines"](str(tmp_path / "three.txt")) == "3"
    # Variables and positional arguments, in order; a value that is not a string is its JSON text; only
    # the last newline goes.
    assert sh["args"]("x y", [1, "z"]) == 'x y|[1, "z"]|x y|[1, "z"]\n'
    assert sh["args"]("only") == "only|3|only|3\n"
    assert sh["count_lines"].map([str(tmp_path / "three.txt")] * 3) == ["3", "3", "3"]


def test_a_non_zero_exit_carries_its_status_and_the_end_of_stderr(
    sh: dict[str, FaasFunction], platform: Platform
) -> None:
    with pytest.raises(ScriptExit, match="exit status 7") as caught:
        sh["fail"](7)
    assert caught.value.status == 7 and "it broke: 7" in caught.value.stderr
    # stderr is the call's output, as print is for Python.
    assert "working on it" in sh["fail"].logs(1)


def test_each_call_is_a_subshell_that_leaves_nothing(sh: dict[str, FaasFunction], platform: Platform) -> None:
    assert sh["leave"]() == "/ 1"
    for _ in range(4):
        assert sh["seen"]().startswith("unset unset 00")


def test_a_cell_that_kills_or_garbles_its_runner_fails_alone(sh: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(Exception, match="runner|exit"):
        sh["kill_runner"]()
    assert sh["args"]("after") == "after|3|after|3\n"
    # The garbage it writes reaches the runner, which gives up; calls after that get a new runner.
    try:
        sh["meddle"]()
    except Exception as error:
        assert "runner" in str(error), error
    for _ in range(3):
        try:
            assert sh["args"]("next") == "next|3|next|3\n"
        except RuntimeFailure:
            continue  # the call that met the garbage
    assert [sh["args"](str(i)) for i in range(4)] == [f"{i}|3|{i}|3\n" for i in range(4)]


def test_the_timeout_kills_the_runner_and_the_next_call_gets_a_new_one(
    sh: dict[str, FaasFunction], platform: Platform
) -> None:
    with pytest.raises(FaasTimeout, match="timeout of 2s"):
        sh["sleepy"]()
    assert [record.status for record in platform.records("sleepy")][-1] == "timeout"
    assert sh["args"]("again") == "again|3|again|3\n"


def test_the_memory_limit_covers_the_scripts_processes(sh: dict[str, FaasFunction], platform: Platform) -> None:
    with pytest.raises(FaasMemoryError):
        sh["hog"]()
    assert sh["args"]("after") == "after|3|after|3\n"


def test_a_default_of_fresh_isolation_does_not_apply(shell: InteractiveShell, platform: Platform) -> None:
    with dask.config.set({"faas.defaults.isolation": "fresh"}):
        run_ok(shell, "%%faas pid_of_runner --lang bash\necho $$")
        run_ok(shell, "%%faas pid_of_python\nimport os\nos.getpid()")
    function = shell.user_ns["pid_of_runner"]
    assert function.limits.isolation == "warm" and shell.user_ns["pid_of_python"].limits.isolation == "fresh"
    # Warm runners answer, one per sandbox slot at most (2 workers x 2 slots here).
    assert len({function() for _ in range(8)}) <= 4


def test_parameters_must_be_shell_names_bash_does_not_own(shell: InteractiveShell) -> None:
    for params, message in [("PATH", "PATH is a variable bash"), ("IFS", "IFS is a variable"), ("été", "not a shell")]:
        result = shell.run_cell(f"%%faas f {params} --lang bash\necho hi")
        assert message in str(result.error_in_exec), str(result.error_in_exec)
