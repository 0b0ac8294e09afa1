"""The transport seam: jobs of invocations go straight to a worker's invocation stream, answers come back.

Dask decides which workers exist (membership, scaling, where they run); this module spreads jobs over
their free slots and talks to each worker over a direct, token-authenticated stream. Over 400 lines, barely:
the job queue, the links and the dispatcher share one lock and are read together.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jupyter_faas.errors import FaasError
from jupyter_faas.worker import plugin as _invoker
from jupyter_faas.worker import wire as _wire
from jupyter_faas.worker.capture import Segments
from jupyter_faas.worker.messages import (
    ChildCall,
    ChildReply,
    ChildResult,
    ErrorInfo,
    Hello,
    Package,
    Run,
    RunExtras,
    RunWithExtras,
    StopCall,
    StreamEvent,
    WorkerFrame,
)

if TYPE_CHECKING:
    from jupyter_faas.dispatch.cluster import ClusterHandle

# A worker that sends nothing for this long past an invocation's timeout is taken for lost:
# its own watchdog would have answered by then.
_SILENCE_GRACE = 30.0
# A worker that has not started its sandboxes this long after joining never will (jupyter-faas is
# missing or broken there); calls waiting with no usable worker then fail instead of hanging.
SETUP_DEADLINE = 60.0
# How often workers are looked for while jobs wait for a slot, and when nothing waits.
_DISCOVER_WAITING = 0.01
_DISCOVER_IDLE = 1.0

# How an attempt ended: "setup" means no worker can run it.
OutcomeStatus = Literal["ok", "error", "timeout", "memory", "lost", "setup"]
# Sends the answer to a call an invocation made (a pickled ChildResult), while that invocation's job runs.
Reply = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's answer to one invocation attempt, or the news that no answer will come."""

    status: OutcomeStatus
    value: bytes = b""
    started: float | None = None
    finished: float | None = None
    fresh: bool = False
    peak_memory: int | None = None
    error: ErrorInfo | None = None
    worker: str | None = None
    worker_started: float | None = None
    # (segments of output not streamed before, bytes dropped), or None when the worker sent none.
    output: tuple[Segments, int] | None = None


@dataclass(slots=True)
class Job:
    """Invocations of one function that share one blob of arguments, run in order in one slot."""

    name: str
    version: str
    package: Package
    blob: bytes
    indices: list[int]
    timeout: float
    memory: int
    deliver: Callable[[int, Outcome], None]
    keep: Callable[[int], bool]
    # Spread this function's jobs over this many zones (None or 1: no spreading).
    zones: int | None = None
    # Bytes of output each invocation keeps; and where output of a running invocation goes.
    max_output: int = 0
    stream: Callable[[int, Segments, int], None] | None = None
    # The values of the function's secrets, read from this process's environment; sent, never stored.
    secrets: dict[str, str] | None = None
    # "warm" or "fresh": how the worker makes the process each call runs in.
    isolation: str = "warm"
    # Largest result, serialized, the sandbox may send back (faas.call.max-bytes).
    max_result: int = 2**62
    # Nobody waits on it now (?async=true, the queue, triggers): it goes after every job somebody waits on.
    background: bool = False
    # Where calls its invocations make go: (index of the caller, the call, how to answer it).
    children: Callable[[int, ChildCall, Reply], None] | None = None
    # A warm class's setup limit (None: the timeout); an async function's calls one sandbox runs at once.
    setup_timeout: float | None = None
    inputs: int = 1
    # Where a setup's end ("init") and a generator's items ("item") go, as they come.
    on_event: Callable[[StreamEvent], None] | None = None
    # Told, when the job's run starts on a worker, how to stop the call at an index while it runs; and told
    # None once it has ended there.
    on_stoppable: Callable[[Callable[[int], None] | None], None] | None = None


def _end(job: Job, outcome: Outcome) -> None:
    """Every call of the job still unanswered ends with this outcome."""
    for index in job.indices:
        job.deliver(index, outcome)


def _end_as_lost(job: Job, message: str, worker: str | None = None) -> None:
    """Lost: the platform retries it or reports it."""
    _end(job, Outcome("lost", error=("WorkerLost", message, "", None), worker=worker))


def _unstoppable(job: Job) -> None:
    if job.on_stoppable is not None:
        job.on_stoppable(None)


def _request(job: Job, with_package: bool) -> RunWithExtras:
    package = job.package if with_package else None
    return (
        "run", job.name, job.version, package, job.blob, job.indices, job.timeout, job.memory, job.max_output,
        job.secrets, job.isolation, job.max_result, _extras(job),
    )  # fmt: skip


def _extras(job: Job) -> RunExtras:
    return {"setup_timeout": job.setup_timeout or job.timeout, "inputs": job.inputs, "timeout": job.timeout}


def _pass_event(job: Job, event: StreamEvent) -> None:
    """A setup's end or a generator's item, to the platform; it may block while the caller is behind."""
    if job.on_event is not None:
        job.on_event(event)


class _Link:
    """One worker's invocation stream: where it listens, its slots, and its open connections."""

    def __init__(self, worker: str, endpoint: tuple[str, int], slots: int, token: bytes) -> None:
        self.worker = worker
        self.endpoint = endpoint
        self.slots = slots
        self.busy = 0
        self.alive = True
        self.known: set[str] = set()
        self.worker_started: float | None = None
        self.zone: str | None = None
        self._token = token
        self._idle: list[socket.socket] = []
        self._in_use: set[socket.socket] = set()
        self._lock = threading.Lock()

    def take(self) -> socket.socket:
        with self._lock:
            if self._idle:
                sock = self._idle.pop()
                self._in_use.add(sock)
                return sock
        sock = socket.create_connection(self.endpoint, timeout=10)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _wire.send_token(sock, self._token)
            hello: Hello = _wire.receive(sock)
            _, self.worker_started, _ = hello
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._in_use.add(sock)
        return sock

    def give_back(self, sock: socket.socket) -> None:
        with self._lock:
            self._in_use.discard(sock)
            if self.alive:
                self._idle.append(sock)
                return
        sock.close()

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._in_use.discard(sock)
        sock.close()

    def close(self, interrupt: bool = False) -> None:
        """Close idle connections; with interrupt, also break those in use, so their waits end now."""
        with self._lock:
            self.alive = False
            idle, self._idle = self._idle, []
            in_use = list(self._in_use) if interrupt else []
        for sock in idle:
            sock.close()
        for sock in in_use:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _JobQueue:
    """Jobs waiting for a slot: those a caller waits on first, then background ones, each in order.

    So a backlog of asynchronous invocations delays a synchronous call by at most one slot's current job.
    """

    def __init__(self) -> None:
        self._waited_on: deque[Job] = deque()
        self._background: deque[Job] = deque()

    def __bool__(self) -> bool:
        return bool(self._waited_on or self._background)

    def _lane(self, job: Job) -> deque[Job]:
        return self._background if job.background else self._waited_on

    def append(self, job: Job) -> None:
        self._lane(job).append(job)

    def appendleft(self, job: Job) -> None:
        self._lane(job).appendleft(job)

    def popleft(self) -> Job:
        return self._waited_on.popleft() if self._waited_on else self._background.popleft()

    def drain(self) -> list[Job]:
        jobs = [*self._waited_on, *self._background]
        self._waited_on.clear()
        self._background.clear()
        return jobs


class _Replies:
    """The answers to calls a running job makes, sent on its stream while it runs, and its slot meanwhile.

    While any of its invocations waits on a call, the job gives its slot back, so the call it waits on
    can run, as Dask's secede does; it takes the slot back once nothing is outstanding (rejoin), or when it
    ends. The dispatcher's lock guards the counts, `sending` the socket.
    """

    def __init__(self, dispatcher: DirectDispatcher, link: _Link, sock: socket.socket) -> None:
        self.dispatcher = dispatcher
        self.link = link
        self.sock = sock
        self.sending = threading.Lock()
        self.outstanding = 0
        self.open = True

    def send(self, message: Run | RunWithExtras) -> None:
        with self.sending:
            _wire.send(self.sock, message)

    def stop(self, index: int) -> None:
        """Ask the worker to stop the call at `index`, if it is still running; nothing once the job is over."""
        with self.sending:
            if self.open:
                message: StopCall = ("stop", index)
                with contextlib.suppress(OSError):  # a broken stream is the job's to report
                    _wire.send(self.sock, message)

    def called(self) -> None:
        with self.dispatcher._lock:
            self.outstanding += 1
            if self.outstanding == 1 and self.open:
                self.link.busy -= 1
                self.dispatcher._assign()

    def answer(self, request_id: int, payload: bytes) -> None:
        with self.sending:
            if self.open:
                reply: ChildReply = ("reply", request_id, payload)
                with contextlib.suppress(OSError):  # a broken stream is the job's to report
                    _wire.send(self.sock, reply)
        with self.dispatcher._lock:
            self.outstanding -= 1
            if self.outstanding == 0 and self.open:
                self.link.busy += 1

    def close(self) -> None:
        """The job is over: nothing more is sent on its stream, and it holds its slot again until it is freed."""
        with self.sending, self.dispatcher._lock:
            self.open = False
            if self.outstanding > 0:
                self.link.busy += 1


class _NotSent(Exception):
    """Not one byte of the job left this process, so it can go elsewhere without counting as an attempt."""


class DirectDispatcher:
    """Sends each job to the worker with the most free slots; jobs wait here while none is free."""

    def __init__(self, cluster: ClusterHandle, token: str) -> None:
        self._cluster = cluster
        self._token = token.encode()
        self._links: dict[str, _Link] = {}
        # Since when calls have waited while workers were there but none could run them.
        self._unusable_since: float | None = None
        self._pending = _JobQueue()
        self._zone_turns: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="faas-dispatch")
        self._discovery = threading.Thread(target=self._discover, name="faas-discovery", daemon=True)
        self._discovery.start()

    # -- what the platform calls ---------------------------------------------------------------------

    def send(self, job: Job) -> None:
        if self._closed:
            _end_as_lost(job, "the platform was shut down before it ran")
            return
        with self._lock:
            self._pending.append(job)
            self._assign()
            waiting = bool(self._pending)
        if waiting:
            self._wake.set()

    def capacity(self) -> int:
        """Slots on the workers known now."""
        with self._lock:
            return sum(link.slots for link in self._links.values() if link.alive)

    def forget_workers(self, interrupt: bool = False) -> None:
        """Drop every link; used after the platform retired all workers, and at shutdown."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close(interrupt)

    def close(self) -> None:
        """Stop: jobs still waiting for a slot end as lost, and jobs under way end as soon as their streams break."""
        self._closed = True
        self._wake.set()
        with self._lock:
            waiting = self._pending.drain()
        for job in waiting:
            _end_as_lost(job, "the platform was shut down before it ran")
        self.forget_workers(interrupt=True)
        self._pool.shutdown(wait=False)

    # -- placing jobs --------------------------------------------------------------------------------

    def _assign(self) -> None:
        """Hand waiting jobs to free slots; the caller holds the lock."""
        while self._pending:
            free = [link for link in self._links.values() if link.alive and link.busy < link.slots]
            if not free:
                return
            job = self._pending.popleft()
            if job.zones and job.zones > 1:
                free = self._in_next_zone(job.name, free)
            link = max(free, key=lambda candidate: candidate.slots - candidate.busy)
            link.busy += 1
            self._pool.submit(self._run, link, job)

    def _in_next_zone(self, name: str, free: list[_Link]) -> list[_Link]:
        """The free links of the zone whose turn it is for this function: its jobs go round the zones."""
        zones = sorted({link.zone or "" for link in free})
        turn = self._zone_turns.get(name, 0)
        self._zone_turns[name] = turn + 1
        # Among the zones that have a free slot now: a full zone's turn passes, it never makes a job wait.
        chosen = zones[turn % len(zones)]
        return [link for link in free if (link.zone or "") == chosen]

    def _run(self, link: _Link, job: Job) -> None:
        try:
            self._exchange(link, job)
        except _NotSent:
            self._drop_link(link)
            if self._closed:
                _end_as_lost(job, "the platform was shut down before it ran")
                return
            with self._lock:
                self._pending.appendleft(job)
        except Exception as error:  # a broken stream after the job was sent: its unanswered calls are lost
            self._drop_link(link)
            message = f"the worker running it was lost ({link.worker}): {type(error).__name__}: {error}"
            _end_as_lost(job, message, link.worker)
        finally:
            with self._lock:
                link.busy -= 1
                self._assign()
                waiting = bool(self._pending)
            if waiting:
                self._wake.set()

    def _exchange(self, link: _Link, job: Job) -> None:
        job.indices = [index for index in job.indices if job.keep(index)]
        if not job.indices:
            return
        try:
            sock = link.take()
        except (OSError, _wire.ConnectionLost) as error:
            raise _NotSent from error
        try:
            _wire.send(sock, _request(job, with_package=job.version not in link.known))
        except _wire.SendFailed as error:
            link.discard(sock)
            if error.sent == 0:
                raise _NotSent from error
            # Part of the frame left: the worker may have begun on it, so this was an attempt. It ends as
            # lost, and the platform retries it only within the function's retries.
            raise
        # The worker answers in the order of job.indices, so what is unanswered is always a tail.
        answered = 0
        replies = _Replies(self, link, sock)
        if job.on_stoppable is not None:
            job.on_stoppable(replies.stop)
        try:
            sock.settimeout(job.timeout + _SILENCE_GRACE)
            while True:
                frame: WorkerFrame | StreamEvent = _wire.receive(sock)
                if frame[0] == "missing":
                    replies.send(_request(job, with_package=True))
                    continue
                if frame[0] == "call":
                    self._on_call(job, frame, replies)
                    continue
                if frame[0] == "output":
                    if job.stream is not None:
                        job.stream(frame[1], frame[2], frame[3])
                    continue
                if frame[0] == "init" or frame[0] == "item":
                    _pass_event(job, frame)
                    continue
                link.known.add(job.version)
                for index, answer in frame[1]:
                    status, value, started, finished, fresh, peak, failure, output = answer
                    outcome = Outcome(
                        status, value, started, finished, fresh, peak, failure, link.worker, link.worker_started, output
                    )
                    job.deliver(index, outcome)
                    answered += 1
                if frame[0] == "done":
                    break
        except BaseException:
            _unstoppable(job)
            replies.close()
            job.indices = job.indices[answered:]
            link.discard(sock)
            raise
        _unstoppable(job)
        replies.close()
        sock.settimeout(None)
        link.give_back(sock)

    def _on_call(self, job: Job, call: ChildCall, replies: _Replies) -> None:
        replies.called()
        request_id = call[2]
        if job.children is None:
            # A job made without a place for calls (by a tool, not the platform): answered, so nobody hangs.
            from_nowhere: ChildResult = ("error", FaasError(f"{job.name} cannot call other functions here"), [])
            replies.answer(request_id, pickle.dumps(from_nowhere, protocol=5))
            return
        job.children(call[1], call, lambda payload: replies.answer(request_id, payload))

    def _fail_if_no_worker_can_start(self, unready: list[str]) -> None:
        """Calls that have waited SETUP_DEADLINE while workers were there but none started its sandboxes
        end with a clear error. Workers that crash and come back under new addresses do not reset the clock."""
        now = time.monotonic()
        with self._lock:
            if self._links or not self._pending:
                self._unusable_since = None
                return
            if not unready and self._unusable_since is None:
                return  # no worker yet: a cluster may take minutes to start one, and that is no failure
            if self._unusable_since is None:
                self._unusable_since = now
            if now - self._unusable_since < SETUP_DEADLINE:
                return
            self._unusable_since = None
            stuck = sorted(unready) or ["workers that have since left"]
            waiting = self._pending.drain()
        from jupyter_faas import __version__

        message = (
            f"no worker started jupyter-faas's sandboxes within {SETUP_DEADLINE:.0f} s of joining "
            f"({', '.join(stuck)}). Is jupyter-faas installed there? pip install jupyter-faas=={__version__}"
        )
        failed = Outcome("setup", error=("FaasError", message, "", None))
        for job in waiting:
            _end(job, failed)

    def _drop_link(self, link: _Link) -> None:
        link.close()
        with self._lock:
            if self._links.get(link.worker) is link:
                del self._links[link.worker]

    # -- finding workers -----------------------------------------------------------------------------

    def _discover(self) -> None:
        while not self._closed:
            with self._lock:
                waiting = bool(self._pending)
            self._wake.wait(_DISCOVER_WAITING if waiting else _DISCOVER_IDLE)
            self._wake.clear()
            if self._closed:
                return
            with contextlib.suppress(Exception):  # the cluster may be starting or stopping; look again soon
                self._refresh()

    def _refresh(self) -> None:
        info = self._cluster.worker_info()
        slots = {address: count for address, (count, _) in info.items()}
        with self._lock:
            gone = [link for address, link in self._links.items() if address not in slots]
            new = [address for address in slots if address not in self._links]
        for link in gone:
            self._drop_link(link)
        self._fail_if_no_worker_can_start(new)
        if not new:
            return
        # One call to the scheduler; a worker whose plugin has not published yet is found on a later round.
        # distributed's Client.get_metadata has no annotations.
        endpoints: dict[str, Any] = self._cluster.client.get_metadata(  # type: ignore[no-untyped-call]
            [_invoker.ENDPOINTS_KEY], default={}
        )
        with self._lock:
            for address in new:
                endpoint = endpoints.get(address)
                if endpoint is not None and address not in self._links:
                    link = _Link(address, (endpoint[0], int(endpoint[1])), slots[address], self._token)
                    link.zone = info[address][1]
                    self._links[address] = link
            self._assign()
