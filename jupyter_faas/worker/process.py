"""What a call can leave behind in the sandbox's process, and its undoing: memory peak, child processes, state."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import importlib
import os
import re
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

_HWM = re.compile(rb"VmHWM:\s+(\d+) kB")
# prctl option: orphaned descendants are re-parented to this process, not to init, so none escapes it.
_PR_SET_CHILD_SUBREAPER = 36
# Signals whose handlers cannot be read or set.
_FIXED_SIGNALS = {signal.SIGKILL, signal.SIGSTOP}
# signal.getsignal wraps every answer in an enum, which costs twenty times the read itself, and restore() reads
# every signal after every call: the C function underneath gives the same handlers (SIG_DFL and SIG_IGN as 0, 1).
_read_handler: Callable[[int], Any] = importlib.import_module("_signal").getsignal


class _ProcStatus:
    """/proc/self/status of the process that made this, read through a descriptor kept open.

    A call may close descriptors or reuse their numbers: the descriptor is checked to be the same file before
    each read, and opened again if it is not.
    """

    _PATH = "/proc/self/status"

    def __init__(self) -> None:
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self._PATH, os.O_RDONLY | os.O_CLOEXEC)
            stat = os.fstat(self._fd)
            self._identity = (stat.st_dev, stat.st_ino)
        except OSError:
            self._fd = self._identity = None

    def read(self) -> bytes:
        fd = self._fd
        if fd is not None:
            try:
                stat = os.fstat(fd)
                if (stat.st_dev, stat.st_ino) == self._identity:
                    return os.pread(fd, 8192, 0)
            except OSError:
                pass
        # Closed or replaced by the call: opened again, and read through the new descriptor.
        self._open()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                return os.pread(self._fd, 8192, 0)
        return b""


class PeakMeter:
    """This process's peak resident memory, reset only when a call has raised it.

    Resetting costs a write to /proc, so it happens only when a call pushed the peak more than
    _SLACK above the level after the last reset; a reading can therefore include at most _SLACK
    left over from earlier calls, far below any memory limit.
    """

    _SLACK = 2 * 2**20

    def __init__(self) -> None:
        # Kept open: reading an open /proc file costs half of opening it each time. It names the process that
        # opens it, so a forked process makes a meter of its own.
        self._status = _ProcStatus()
        self._reset()
        hwm = self._status_peak()
        # getrusage is twenty times cheaper than /proc/self/status; use it where the reset reaches it.
        self._cheap = hwm is not None and abs(self._rusage_peak() - hwm) <= self._SLACK
        self._floor = self.read() or 0

    @staticmethod
    def _reset() -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def _status_peak(self) -> int | None:
        match = _HWM.search(self._status.read())
        return int(match.group(1)) * 1024 if match else None

    @staticmethod
    def _rusage_peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def read(self) -> int | None:
        return self._rusage_peak() if self._cheap else self._status_peak()

    def after_call(self) -> int | None:
        """The peak since the last reset; resets it if this call raised it."""
        peak = self.read()
        if peak is not None and peak > self._floor + self._SLACK:
            self._reset()
            self._floor = self.read() or 0
        return peak


def _children() -> list[int]:
    """This process's child processes; as a subreaper it inherits every orphaned descendant too."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.extend(int(pid) for pid in f.read().split())
    except OSError:
        import psutil

        with contextlib.suppress(psutil.Error):
            pids = [child.pid for child in psutil.Process().children()]
    return pids


# Runner processes of the runtimes (worker/runtimes/), kept warm across calls: the only children a call's
# cleanup leaves alive. What a call starts under them comes back here when they do not wait for it.
SPARED: set[int] = set()


def _has_children() -> bool:
    """Whether this process has any child, running or ended: one system call, where listing them reads a file
    per thread."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except OSError:
        return True
    return True


def stop_strays() -> None:
    """Kill every process the call started and left running (subprocess, fork, setsid): a call leaves nothing.

    Killing a child re-parents its own children to this subreaper, so repeat until none are left.
    """
    if not _has_children():
        return
    for _ in range(1000):
        pids = [pid for pid in _children() if pid not in SPARED]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    # Orphans that ended on their own are zombies of this subreaper until reaped.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


# Stands for a name that builtins did not have.
_MISSING = object()


class ProcessState:
    """What a call can change in this process and the next call must not see; taken once, restored after each.

    Imported modules (sys.modules) and their attributes are kept on purpose, as in a warm container.
    """

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.environ = dict(os.environ)
        # os.environ's own table (bytes on POSIX): equal to this copy means nothing to restore, checked at once.
        self._environ_table = _environ_table()
        self._environ_snapshot = dict(self._environ_table) if self._environ_table is not None else None
        self.path = list(sys.path)
        self.argv = list(sys.argv)
        self.recursion_limit = sys.getrecursionlimit()
        self.stdio = (sys.stdin, sys.stdout, sys.stderr)
        self.displayhook, self.excepthook = sys.displayhook, sys.excepthook
        self.builtins = dict(builtins.__dict__)
        # The same names, in order, bound to the same objects: ids compare in C; the originals are held in
        # self.builtins, so no other object can take one of their ids.
        self._builtin_names = list(self.builtins)
        self._builtin_ids = [id(value) for value in self.builtins.values()]
        self.blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.signals: dict[signal.Signals, Any] = {}
        for signum in signal.valid_signals():
            if signum in _FIXED_SIGNALS:
                continue
            with contextlib.suppress(ValueError, OSError):
                handler = _read_handler(signum)
                if handler is not None:
                    self.signals[signum] = handler

    def restore(self) -> None:
        # builtins first: the rest of this, and the answer's pickling, rely on them.
        current = builtins.__dict__
        if list(current) != self._builtin_names or list(map(id, current.values())) != self._builtin_ids:
            for name in [name for name in current if name not in self.builtins]:
                del current[name]
            for name, value in self.builtins.items():
                if current.get(name, _MISSING) is not value:
                    current[name] = value
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        os.umask(self.umask)
        table = _environ_table()
        if table is None or table is not self._environ_table or table != self._environ_snapshot:
            for name in [name for name in os.environ if name not in self.environ]:
                del os.environ[name]
            for name, value in self.environ.items():
                if os.environ.get(name) != value:
                    os.environ[name] = value
        sys.path[:] = self.path
        sys.argv[:] = self.argv
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        sys.stdin, sys.stdout, sys.stderr = self.stdio
        sys.displayhook, sys.excepthook = self.displayhook, self.excepthook
        # A timer a call armed would otherwise fire during a later call, on the handler restored below.
        for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            with contextlib.suppress(OSError):
                signal.setitimer(timer, 0)
        # A try, not a context manager per signal: entering one costs more than the read itself.
        for signum, handler in self.signals.items():
            try:
                if _read_handler(signum) is not handler:
                    signal.signal(signum, handler)
            except (ValueError, OSError, TypeError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self.blocked)


def _environ_table() -> dict[Any, Any] | None:
    table = getattr(os.environ, "_data", None)
    return table if isinstance(table, dict) else None


def become_subreaper() -> None:
    """Orphans of the processes a call starts come back to this process, so it can stop them all."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
