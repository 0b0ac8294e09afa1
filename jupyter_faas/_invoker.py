"""The worker side: sandbox processes that run invocations, with hard timeouts and memory limits."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import psutil
from distributed import WorkerPlugin, get_worker

from jupyter_faas._limits import format_size

# How often a running invocation's memory is sampled; fast calls answer before the first sample.
_MEMORY_POLL = 0.05
# A sandbox that has not said "ready" by then is broken, not slow.
_READY_TIMEOUT = 60.0

# (status, value, started, finished, fresh, peak_memory, error) as the sandbox answers it.
Answer = tuple[str, bytes, float, float, bool, "int | None", "tuple[str, str, str, bytes | None] | None"]


class SandboxGone(Exception):
    """The sandbox process ended while it was being spoken to."""


def _exit_description(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Sandbox:
    """One child process that runs invocations one at a time and can be killed at any moment."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, JUPYTER_FAAS_SYS_PATH=json.dumps(sys.path))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_faas._runner", str(child.fileno())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.known: set[str] = set()
        self.ready = False
        self._stats = psutil.Process(self.process.pid)

    def _wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(_READY_TIMEOUT):
            self.kill()
            raise SandboxGone("did not start within a minute")
        try:
            self.conn.recv_bytes()
        except (EOFError, OSError):
            raise SandboxGone(self._died()) from None
        self.ready = True

    def _died(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        return _exit_description(code)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.conn.close()

    def run(self, name: str, version: str, package: Any, args_bytes: bytes, timeout: float, memory: int) -> Answer:
        """Run one invocation; kills the sandbox on timeout or runaway memory, and says so."""
        self._wait_ready()
        send_package = None if version in self.known else package
        answer = self._exchange(name, version, send_package, args_bytes, timeout, memory)
        if answer[0] == "missing":
            answer = self._exchange(name, version, package, args_bytes, timeout, memory)
        self.known.add(version)
        return answer

    def _exchange(
        self, name: str, version: str, package: Any, args_bytes: bytes, timeout: float, memory: int
    ) -> Answer:
        sent = time.time()
        deadline = time.monotonic() + timeout
        try:
            self.conn.send_bytes(pickle.dumps(("call", version, package, args_bytes, memory), protocol=5))
        except OSError:
            raise SandboxGone(self._died()) from None
        fresh = package is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                message = f"{name} ran past its timeout of {timeout:g}s and was stopped"
                return ("timeout", b"", sent, time.time(), fresh, None, ("FaasTimeout", message, "", None))
            if self.conn.poll(min(_MEMORY_POLL, remaining)):
                try:
                    return pickle.loads(self.conn.recv_bytes())
                except (EOFError, OSError):
                    raise SandboxGone(self._died()) from None
            try:
                resident = self._stats.memory_info().rss
            except psutil.Error:
                continue
            if resident > memory:
                self.kill()
                message = f"{name} went over its memory limit of {format_size(memory)} and was stopped"
                return ("memory", b"", sent, time.time(), fresh, resident, ("FaasMemoryError", message, "", None))


class Invoker:
    """The sandboxes of one worker process: one per thread the worker runs tasks on."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._idle: list[Sandbox] = []
        self._all: set[Sandbox] = set()
        self._lock = threading.Lock()
        self._closed = False

    def prewarm(self) -> None:
        """Start the sandboxes now, so the first invocations do not wait for them."""
        with self._lock:
            while len(self._all) < self.slots and not self._closed:
                sandbox = Sandbox()
                self._all.add(sandbox)
                self._idle.append(sandbox)

    def _acquire(self) -> Sandbox:
        with self._lock:
            if self._closed:
                raise SandboxGone("the worker is closing")
            while self._idle:
                sandbox = self._idle.pop()
                if sandbox.alive:
                    return sandbox
                self._all.discard(sandbox)
            sandbox = Sandbox()
            self._all.add(sandbox)
            return sandbox

    def _release(self, sandbox: Sandbox) -> None:
        with self._lock:
            if sandbox.alive and not self._closed:
                self._idle.append(sandbox)
                return
            self._all.discard(sandbox)
        sandbox.kill()

    def invoke(self, name: str, version: str, package: Any, args_bytes: bytes, timeout: float, memory: int) -> Answer:
        sandbox = self._acquire()
        try:
            answer = sandbox.run(name, version, package, args_bytes, timeout, memory)
        except SandboxGone as gone:
            sandbox.kill()
            self._release(sandbox)
            message = f"the process running {name} {gone}"
            now = time.time()
            return ("error", b"", now, now, False, None, ("SandboxExit", message, "", None))
        if answer[0] == "memory":
            # Its peak is spent and its memory may still be held: start the next call clean.
            sandbox.kill()
        self._release(sandbox)
        return answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sandboxes = list(self._all)
            self._all.clear()
            self._idle.clear()
        for sandbox in sandboxes:
            sandbox.kill()


_invoker: Invoker | None = None
_invoker_lock = threading.Lock()


def invoker_for_this_process(slots: int) -> Invoker:
    global _invoker
    with _invoker_lock:
        if _invoker is None or _invoker._closed:
            _invoker = Invoker(slots)
        return _invoker


class SandboxPlugin(WorkerPlugin):
    """Starts a worker's sandboxes with the worker, and stops them with it."""

    name = "jupyter-faas-sandboxes"

    def setup(self, worker: Any) -> None:
        invoker_for_this_process(worker.state.nthreads).prewarm()

    def teardown(self, worker: Any) -> None:
        if _invoker is not None:
            _invoker.close()


def execute(
    name: str, version: str, package: Any, args_bytes: bytes, timeout: float, memory: int
) -> tuple[Answer, str, float]:
    """The Dask task of one invocation attempt: runs it in a sandbox of this worker.

    Returns the sandbox's answer, the worker's address and when the worker process started,
    so the caller can tell whether the invocation waited for a new worker.
    """
    worker = get_worker()
    invoker = invoker_for_this_process(worker.state.nthreads)
    answer = invoker.invoke(name, version, package, args_bytes, timeout, memory)
    return answer, worker.address, _process_started()


def _process_started() -> float:
    global _started_at
    if _started_at is None:
        _started_at = psutil.Process().create_time()
    return _started_at


_started_at: float | None = None
