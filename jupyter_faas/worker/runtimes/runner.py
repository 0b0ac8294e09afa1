"""A warm runner child process that speaks a line protocol: the base of the JavaScript and bash runtimes."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from abc import abstractmethod
from typing import Any

import psutil

from jupyter_faas.errors import FaasMemoryError, FaasTimeout, RuntimeFailure
from jupyter_faas.units import format_size
from jupyter_faas.worker import process as _process
from jupyter_faas.worker.runtimes import Program, Runtime

# How often a running call's memory (the runner's whole process tree) is measured.
_MEMORY_POLL = 0.02
# How much of a call's stderr an error carries.
STDERR_TAIL = 2000
_READ = 65536


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += int(member.memory_info().rss)
    return total


class ChildRunner(Runtime):
    """A runner process kept warm: requests on its stdin, one answer each on the fd it is given, output on stdio.

    While a call runs, its stdout and stderr are copied to this process's (captured for the invocation), and
    its process tree's memory is watched. A timeout or a memory overrun kills the runner; the next call starts
    a new one.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._answers = -1
        self._stats: psutil.Process | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The runner's command line; the number of the fd it answers on is added as its last argument."""

    @abstractmethod
    def request(self, program: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """One call, encoded for the runner."""

    @abstractmethod
    def answer_complete(self, buffer: bytes) -> int | None:
        """The length of the first whole answer at the start of `buffer`, or None while it is incomplete."""

    @abstractmethod
    def result(self, program: Any, answer: bytes, stderr_tail: str) -> Any:
        """The call's value from its answer; raises the cell's error."""

    def start(self) -> None:
        answers_read, answers_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [*self.command(), str(answers_write)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(answers_write,),
            )
        except OSError as e:
            os.close(answers_read)
            raise RuntimeFailure(f"cannot start the runner {self.command()[0]}: {e}") from None
        finally:
            os.close(answers_write)
        self._answers = answers_read
        self._stats = psutil.Process(self.process.pid)
        # Kept warm across calls: the sandbox's cleanup after each call spares it (and only it).
        _spare(self.process.pid)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        _unspare(process.pid)
        if self._stats is not None:
            with contextlib.suppress(psutil.Error):
                for child in self._stats.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        for stream in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(OSError):
            os.close(self._answers)
        self._answers = -1

    def run(self, program: Program, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = self.request(program, args, kwargs)
        if self.process is None or self.process.poll() is not None:
            self.stop()
            self.start()
        process = self.process
        assert process is not None and process.stdin is not None and process.stdout is not None
        assert process.stderr is not None and self._stats is not None
        try:
            process.stdin.write(request)
            process.stdin.flush()
        except OSError:
            self.stop()
            raise RuntimeFailure(f"the {program.runtime} runner ended before the call was sent") from None
        stdout_fd, stderr_fd = process.stdout.fileno(), process.stderr.fileno()
        deadline = time.monotonic() + program.deadline_seconds()
        next_poll = time.monotonic() + _MEMORY_POLL
        answer, stderr_tail = b"", ""
        open_fds = [self._answers, stdout_fd, stderr_fd]
        while True:
            now = time.monotonic()
            if now >= deadline:
                self.stop()
                raise FaasTimeout(f"{program.name} ran past its timeout of {program.timeout:g}s and was stopped")
            if now >= next_poll:
                resident = _tree_rss(self._stats)
                if resident > program.memory:
                    self.stop()
                    raise FaasMemoryError(
                        f"{program.name} went over its memory limit of {format_size(program.memory)} and was stopped"
                    )
                next_poll = now + _MEMORY_POLL
            ready, _, _ = select.select(open_fds, [], [], min(deadline - now, _MEMORY_POLL))
            for fd in ready:
                data = os.read(fd, _READ)
                if not data:
                    open_fds.remove(fd)
                    if fd == self._answers:
                        code = process.wait()
                        self.stop()
                        raise RuntimeFailure(
                            f"the {program.runtime} runner exited with code {code} during the call; "
                            f"its stderr ended with: {stderr_tail[-STDERR_TAIL:]}"
                        )
                    continue
                if fd == self._answers:
                    answer += data
                else:
                    stderr_tail = _forward(data, fd == stderr_fd, stderr_tail)
            length = self.answer_complete(answer)
            if length is not None:
                if len(answer) > length:
                    self.stop()
                    raise RuntimeFailure(f"the {program.runtime} runner answered more than once")
                break
        # The runner wrote its output before its answer, to pipes, so what is left of it is there already.
        for fd in (stdout_fd, stderr_fd):
            while select.select([fd], [], [], 0)[0]:
                data = os.read(fd, _READ)
                if not data:
                    break
                stderr_tail = _forward(data, fd == stderr_fd, stderr_tail)
        return self.result(program, answer, stderr_tail)


def _forward(data: bytes, is_stderr: bool, stderr_tail: str) -> str:
    """Copy the runner's output to this process's stream of the same name (captured); the new stderr tail."""
    text = data.decode("utf-8", "replace")
    if is_stderr:
        sys.stderr.write(text)
        return (stderr_tail + text)[-STDERR_TAIL:]
    sys.stdout.write(text)
    return stderr_tail


def _spare(pid: int) -> None:
    _process.SPARED.add(pid)


def _unspare(pid: int) -> None:
    _process.SPARED.discard(pid)
