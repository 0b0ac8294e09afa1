"""A worker's sandboxes: the child processes that run invocations, started, watched and killed from here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import psutil

from jupyter_faas.errors import FaasError
from jupyter_faas.units import format_size
from jupyter_faas.worker import wire as _wire
from jupyter_faas.worker.capture import Segments
from jupyter_faas.worker.messages import (
    Answer,
    AnswerStatus,
    ChildReply,
    IndexedAnswer,
    Package,
    RunExtras,
    SandboxCall,
    SandboxMessage,
    SandboxRun,
    SetupStarted,
    StreamEvent,
    ToWorker,
)

# How often a running invocation's memory is sampled; fast calls answer before the first sample.
_MEMORY_POLL = 0.05
# A sandbox that has not said "ready" by then is broken, not slow.
_READY_TIMEOUT = 60.0
# The largest result when none is set: more than any machine holds.
NO_RESULT_LIMIT = 2**62
# Where each call's answer goes, with the call's index.
OnAnswer = Callable[[int, Answer], None]
# (index, segments, bytes dropped so far): output of a call still running.
OnOutput = Callable[[int, Segments, int], None]
# A setup's end ("init") or a generator's item, passed on to the client as it comes.
OnEvent = Callable[[StreamEvent], None]
# A retired sandbox has this long to run its warm instances' teardown() before it is killed.
TEARDOWN_GRACE = 5.0
# Calls run at once (--inputs) cancel their own tasks at their timeout; the worker stops the sandbox only
# when one has not answered this long after.
_CONCURRENT_GRACE = 2.0
# (index, the call, seconds the invocation has left): a call the running invocation makes.
OnCall = Callable[[int, SandboxCall, float], None]


# The answer to a call made where nothing can take it.
_NO_UPSTREAM = pickle.dumps(
    ("error", FaasError("this worker cannot pass calls to other functions on to a platform"), []), protocol=5
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the calls a batch's invocations make go, and where their answers come back from."""

    sock: socket.socket
    on_call: OnCall


# The only variables a sandbox starts with: what programs and Python need to run, never a token or a
# setting of the platform, the server or Dask. A function's own secrets are added for its calls only.
_SANDBOX_ENVIRONMENT = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TEMP", "TMP",
        "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
        "PYTHONFAULTHANDLER", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    }
)  # fmt: skip
_SANDBOX_ENVIRONMENT_PREFIXES = ("LC_",)


def sandbox_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The allow-listed part of `environ` that a sandbox starts with."""
    return {
        name: value
        for name, value in environ.items()
        if name in _SANDBOX_ENVIRONMENT or name.startswith(_SANDBOX_ENVIRONMENT_PREFIXES)
    }


# -I keeps the worker's current directory off the path: the sandbox must import this very jupyter_faas.
# The folder that holds jupyter_faas/ (this file is jupyter_faas/worker/plugin.py).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from jupyter_faas.worker.sandbox import main; main()"


@dataclass(frozen=True, slots=True)
class Batch:
    """Calls of one function version that share one blob of arguments, and the limits each runs under."""

    name: str
    version: str
    package: Package
    blob: bytes
    timeout: float
    memory: int
    max_output: int
    # Environment variables the calls see, by name: the function's declared secrets.
    secrets: dict[str, str] | None = None
    # "fresh": each call runs in a process the sandbox forks for it and that ends with it.
    isolation: str = "warm"
    # Largest result, serialized, a call may send back; past it the call fails with ResultTooLarge.
    max_result: int = NO_RESULT_LIMIT
    # How long a warm class's setup() may take (None: the timeout), and calls of an async function run at once.
    setup_timeout: float | None = None
    inputs: int = 1

    def extras(self) -> RunExtras:
        return {
            "setup_timeout": self.setup_timeout or self.timeout,
            "inputs": self.inputs,
            "timeout": self.timeout,
            "name": self.name,
        }


# What a sandbox may send: a streamed output, a request for the package, a call, setup and streaming events, or an
# answer's status ("timeout" when a runtime of worker/runtimes/ stopped its call itself).
_MESSAGES = frozenset(
    {"output", "missing", "call", "ok", "error", "memory", "timeout", "setup", "init", "item", "answer-at"}
)


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


def failure(
    status: AnswerStatus, type_name: str, message: str, started: float, fresh: bool, peak: int | None
) -> Answer:
    """The answer for a call the worker stopped, or that no sandbox answered."""
    return (status, b"", started, time.time(), fresh, peak, (type_name, message, "", None), None)


_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def _readable(conn: Connection, upstream: Upstream | None, timeout: float) -> list[object]:
    """Which of the sandbox's pipe and the upstream socket can be read now, waiting up to `timeout`.

    One poll() call: multiprocessing's wait() builds a selector, registers and closes it each time.
    """
    poller = select.poll()
    poller.register(conn.fileno(), _READABLE)
    if upstream is not None:
        poller.register(upstream.sock.fileno(), _READABLE)
    ready: list[object] = []
    # Rounded up: rounded down, the last millisecond before a deadline would spin.
    for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000))):
        ready.append(conn if fd == conn.fileno() else upstream.sock if upstream is not None else conn)
    return ready


class Sandbox:
    """One child process that runs invocations one at a time and can be killed at any moment."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(sandbox_environment(os.environ), JUPYTER_FAAS_SYS_PATH=json.dumps(sys.path))
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(child.fileno())],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
            # Out of the notebook's process group: interrupting the kernel must not interrupt invocations.
            start_new_session=True,
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
        """Kill the sandbox and every process it started, however they detached (setsid, double fork)."""
        if self.process.poll() is None:
            # Stopped, a process forks no more: stop the sandbox, then its descendants as they are found,
            # until none is new; then kill them all. The sandbox is a subreaper, so its tree holds them all.
            tree = [self._stats]
            with contextlib.suppress(psutil.Error):
                self._stats.suspend()
            seen = {self.process.pid}
            for _ in range(100):
                try:
                    found = [p for p in self._stats.children(recursive=True) if p.pid not in seen]
                except psutil.Error:
                    break
                if not found:
                    break
                for process in found:
                    seen.add(process.pid)
                    tree.append(process)
                    with contextlib.suppress(psutil.Error):
                        process.suspend()
            for process in reversed(tree):
                with contextlib.suppress(psutil.Error):
                    process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.conn.close()

    def close_socket(self) -> None:
        """Tell the sandbox to end: it runs its teardowns, then exits (kill() stops it if it does not)."""
        with contextlib.suppress(OSError):
            self.conn.close()

    def run(
        self,
        batch: Batch,
        indices: list[int],
        on_answer: OnAnswer,
        on_output: OnOutput,
        upstream: Upstream | None = None,
        on_event: OnEvent | None = None,
    ) -> int:
        """Run the batch's calls at `indices`, answering each; returns how many were answered.

        Fewer than all means the sandbox was killed (timeout, memory) or died; the last one answered
        says why, and the rest have not started. Calls the invocations make go `upstream`, and the
        answers that come back from there are passed on to the sandbox.
        """
        self._wait_ready()
        name, timeout, memory = batch.name, batch.timeout, batch.memory
        fresh = batch.version not in self.known
        self._send(batch, indices, with_package=fresh)
        answered = 0
        deadline = time.monotonic() + timeout
        began = time.time()  # when the running call started
        # Calls run at once answer in any order: kept here until those before them have answered.
        at_once = batch.inputs > 1 and len(indices) > 1
        early: dict[int, Answer] = {}
        in_setup = False
        while answered < len(indices):
            index = indices[answered]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                if in_setup:
                    limit = batch.setup_timeout or timeout
                    message = f"{name}'s setup() ran past its setup timeout of {limit:g}s and was stopped"
                else:
                    message = f"{name} ran past its timeout of {timeout:g}s and was stopped"
                limit = (batch.setup_timeout or timeout) if in_setup else timeout
                stopped: tuple[float, bool, int | None] = (time.time() - limit, fresh, None)
                why: tuple[AnswerStatus, str, str] = ("timeout", "FaasTimeout", message)
                return self._fail_rest(indices, answered, early, at_once, why, stopped, on_answer)
            ready = _readable(self.conn, upstream, min(_MEMORY_POLL, remaining))
            if upstream is not None and upstream.sock in ready:
                try:
                    from_client: ToWorker = _wire.receive(upstream.sock)
                except OSError:
                    self.kill()  # the platform is gone: nobody waits for this call any more
                    raise
                if from_client[0] == "stop":
                    # Calls run at once share the process: stopping one would stop them all, so they run on.
                    if from_client[1] == index and not at_once:
                        self.kill()
                        left = f"{name} was stopped: its caller closed its stream of items"
                        why = ("error", "StreamClosed", left)
                        return self._fail_rest(indices, answered, early, at_once, why, (began, fresh, None), on_answer)
                    continue
                self._pass_on(from_client)
            if self.conn not in ready:
                resident = self._resident(batch.isolation == "fresh")
                if resident is not None and resident > memory:
                    self.kill()
                    message = f"{name} went over its memory limit of {format_size(memory)} and was stopped"
                    why = ("memory", "FaasMemoryError", message)
                    stopped = (time.time(), fresh, resident)
                    return self._fail_rest(indices, answered, early, at_once, why, stopped, on_answer)
                continue
            try:
                received = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                message = f"the process running {name} {self._died()}"
                on_answer(index, failure("error", "SandboxExit", message, time.time(), fresh, None))
                return answered + 1
            except Exception as e:
                # Not an answer: the sandbox is damaged. It is retired, never reused.
                self.kill()
                message = f"the process running {name} broke its protocol ({type(e).__name__}) and was replaced"
                on_answer(index, failure("error", "SandboxExit", message, time.time(), fresh, None))
                return answered + 1
            if not isinstance(received, tuple) or not received or received[0] not in _MESSAGES:
                self.kill()
                message = f"the process running {name} sent something else than an answer and was replaced"
                on_answer(index, failure("error", "SandboxExit", message, time.time(), fresh, None))
                return answered + 1
            # Checked just above, as far as its tag: a sandbox of this very version sent it.
            sent: SandboxMessage | SetupStarted | StreamEvent | IndexedAnswer = received
            if sent[0] == "output":
                on_output(sent[1], sent[2], sent[3])
                continue
            if sent[0] == "missing":
                self._send(batch, indices, with_package=True)
                continue
            if sent[0] == "setup":
                # setup() has its own limit; the call's own time starts when it ends.
                in_setup = True
                deadline = time.monotonic() + (batch.setup_timeout or timeout)
                continue
            if sent[0] == "init":
                in_setup = False
                deadline = time.monotonic() + timeout + (_CONCURRENT_GRACE if at_once else 0.0)
                self._pass_event(sent, on_event)
                continue
            if sent[0] == "item":
                self._pass_event(sent, on_event)
                continue
            if sent[0] == "answer-at":
                early[sent[1]] = sent[2]
                deadline = time.monotonic() + timeout + _CONCURRENT_GRACE
                while answered < len(indices) and indices[answered] in early:
                    on_answer(indices[answered], early.pop(indices[answered]))
                    answered += 1
                self.known.add(batch.version)
                continue
            if sent[0] == "call":
                if upstream is None:
                    self._pass_on(("reply", sent[1], _NO_UPSTREAM))
                else:
                    upstream.on_call(index, sent, deadline - time.monotonic())
                continue
            self.known.add(batch.version)
            fresh = False
            on_answer(index, sent)
            answered += 1
            deadline = time.monotonic() + timeout
            began = time.time()
            if sent[0] == "memory" and batch.isolation != "fresh":
                # Its peak is spent and its memory may still be held: the next call starts clean. (A fresh
                # call's process is already gone, with its memory.)
                self.kill()
                return answered
        return answered

    def _pass_event(self, event: StreamEvent, on_event: OnEvent | None) -> None:
        if on_event is None:
            return
        try:
            on_event(event)
        except BaseException:
            # The caller is gone mid-stream: the call it was streaming cannot go on without it.
            self.kill()
            raise

    def _fail_rest(
        self,
        indices: list[int],
        answered: int,
        early: dict[int, Answer],
        at_once: bool,
        why: tuple[AnswerStatus, str, str],
        stopped: tuple[float, bool, int | None],
        on_answer: OnAnswer,
    ) -> int:
        """The sandbox was stopped: the call running fails; calls run at once all fail (those that ended keep
        their answers); returns how many are answered now. `why` is (status, error type, message), `stopped`
        (when the failed call started, fresh, peak memory)."""
        status, kind, message = why
        started, fresh, peak = stopped
        if not at_once:
            on_answer(indices[answered], failure(status, kind, message, started, fresh, peak))
            return answered + 1
        for index in indices[answered:]:
            answer = early.pop(index, None) or failure(status, kind, message, started, False, peak)
            on_answer(index, answer)
        return len(indices)

    def _pass_on(self, reply: ChildReply) -> None:
        """An answer to a call of the running invocation; anything else from upstream is no answer and is dropped."""
        if not isinstance(reply, tuple) or len(reply) != 3 or reply[0] != "reply":
            return
        with contextlib.suppress(OSError):  # a sandbox that is gone is found out by the loop
            self.conn.send_bytes(pickle.dumps(reply, protocol=5))

    def _send(self, batch: Batch, indices: list[int], with_package: bool) -> None:
        package = batch.package if with_package else None
        request: SandboxRun = (
            "run", batch.version, package, batch.blob, indices, batch.memory, batch.max_output, batch.secrets,
            batch.isolation, batch.max_result, batch.extras(),
        )  # fmt: skip
        try:
            self.conn.send_bytes(pickle.dumps(request, protocol=5))
        except OSError:
            raise SandboxGone(self._died()) from None

    def _resident(self, forked: bool = False) -> int | None:
        """The memory of the running call: the sandbox's, or with `forked` that of the process it forked for it."""
        try:
            if forked:
                # Each call is a child of the sandbox (and any process it starts, that child's).
                return max((int(child.memory_info().rss) for child in self._stats.children()), default=0)
            return int(self._stats.memory_info().rss)
        except psutil.Error:
            return None


class Invoker:
    """The sandboxes of one worker process: one per slot, each running one invocation at a time."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._idle: list[Sandbox] = []
        self._all: set[Sandbox] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

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
            # Past the slots, sandboxes were started for invocations that ran while their callers waited
            # on them: once idle again, the extra ones end.
            if sandbox.alive and not self._closed and len(self._idle) < self.slots:
                self._idle.append(sandbox)
                return
            self._all.discard(sandbox)
        sandbox.kill()

    def invoke(
        self,
        batch: Batch,
        indices: list[int],
        on_answer: OnAnswer,
        on_output: OnOutput,
        upstream: Upstream | None = None,
        on_event: OnEvent | None = None,
    ) -> None:
        """Run every call at `indices`, each with its own timeout; a killed sandbox is replaced mid-batch."""
        name = batch.name
        remaining = list(indices)
        while remaining:
            try:
                sandbox = self._acquire()
            except SandboxGone as gone:
                for index in remaining:
                    on_answer(index, failure("error", "SandboxExit", f"{name}: {gone}", time.time(), False, None))
                return
            try:
                answered = sandbox.run(batch, remaining, on_answer, on_output, upstream, on_event)
            except SandboxGone as gone:
                sandbox.kill()
                message = f"the process running {name} {gone}"
                on_answer(remaining[0], failure("error", "SandboxExit", message, time.time(), False, None))
                answered = 1
            finally:
                self._release(sandbox)
            remaining = remaining[answered:]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sandboxes = list(self._all)
            self._all.clear()
            self._idle.clear()
        # Retired, not killed: each may run its warm instances' teardown() first. At once, so the grace is paid once.
        for sandbox in sandboxes:
            sandbox.close_socket()
        ends = time.monotonic() + TEARDOWN_GRACE
        for sandbox in sandboxes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sandbox.process.wait(timeout=max(0.0, ends - time.monotonic()))
            sandbox.kill()
