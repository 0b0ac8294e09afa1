"""The bash runtime: a cell is a script whose parameters are environment variables and positional arguments."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

from jupyter_faas.errors import RuntimeFailure, ScriptExit
from jupyter_faas.worker import runtimes as _runtimes
from jupyter_faas.worker.runtimes.runner import ChildRunner

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bash_runner.sh")) as _file:
    _RUNNER_TEXT = _file.read()
_HEADER = re.compile(rb"(-?\d+) (\d+)\n")
# Variables a parameter may not be named after: bash or the runner itself read them.
RESERVED = frozenset(
    {"PATH", "IFS", "HOME", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "LC_ALL", "LANG", "OPTIND",
     "LD_PRELOAD", "LD_LIBRARY_PATH", "PWD", "OLDPWD", "UID", "EUID", "PPID", "RANDOM", "SECONDS", "LINENO"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_parameter(name: str) -> str | None:
    """Why `name` cannot be a bash cell's parameter, or None when it can."""
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a shell variable name (ASCII letters, digits and _)"
    if name in RESERVED or name.startswith("BASH_") or name.startswith("FAAS_"):
        return f"{name} is a variable bash or the runner reads; choose another name"
    return None


@dataclass(frozen=True)
class BashProgram(_runtimes.Program):
    """A bash cell: a script run in a subshell of a warm bash."""

    runtime: ClassVar[str] = "bash"
    source: str = ""


def _field(text: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise ValueError("a bash value cannot hold a NUL character")
    return b"%d\n%s" % (len(data), data)


class BashRuntime(ChildRunner):
    """A bash process per sandbox, kept warm: each call is a subshell of it, forked, never a new exec."""

    def command(self) -> list[str]:
        bash = shutil.which("bash")
        if bash is None:
            raise RuntimeFailure("bash cells need bash on the worker")
        # The runner's text as an argument, not a file: bash keeps a script file open, where a cell could write.
        return [bash, "--noprofile", "--norc", "-c", _RUNNER_TEXT, "faas-bash-runner"]

    def request(self, program: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        values = program.bind(args, kwargs)
        fields = [_field(program.source)]
        for name, value in zip(program.params, values, strict=True):
            # A string is passed as it is; any other JSON value as its JSON text.
            text = value if isinstance(value, str) else program.json_text(name, value)
            try:
                fields += [_field(name), _field(text)]
            except ValueError as e:
                raise ValueError(f"{program.name}(): the argument {name}: {e}") from None
        return b"%d\n" % len(fields) + b"".join(fields)

    def answer_complete(self, buffer: bytes) -> int | None:
        header = _HEADER.match(buffer)
        if header is None:
            return None
        end = header.end() + int(header.group(2))
        return end if len(buffer) >= end else None

    def result(self, program: Any, answer: bytes, stderr_tail: str) -> Any:
        header = _HEADER.match(answer)
        assert header is not None
        status = int(header.group(1))
        if status != 0:
            raise ScriptExit(status, stderr_tail)
        return answer[header.end() :].decode("utf-8", "replace")


_runtimes.RUNTIMES[BashProgram.runtime] = BashRuntime
