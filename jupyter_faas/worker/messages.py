"""The messages of the invocation protocol: client and worker frames, worker and sandbox messages, answers.

Each is a NamedTuple whose first field names its kind: as cheap to build and pickle as the bare tuples
they replace, and importable in the sandbox (typing only). Client and worker run the same version (the
version check makes sure), so the classes pickled by one are the classes the other unpickles.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from jupyter_faas.worker.capture import Segments

# How an attempt ended on the worker: "timeout" and "memory" when the worker stopped the call.
AnswerStatus = Literal["ok", "error", "memory", "timeout"]
# (type name, message, traceback text, the pickled exception or None): an error as it travels.
ErrorInfo = tuple[str, str, str, bytes | None]
# (segments not yet streamed, bytes dropped): the rest of an invocation's output, sent with its answer.
TrailingOutput = tuple[Segments, int]
# What a function is shipped as: (cloudpickled function, file name, source, reusable).
Package = tuple[bytes, str, str, bool]


class Answer(NamedTuple):
    """One invocation's result, as the sandbox (or the worker, for a call it stopped) reports it."""

    status: AnswerStatus
    value: bytes
    started: float
    finished: float
    fresh: bool
    peak: int | None
    error: ErrorInfo | None
    output: TrailingOutput | None = None


# -- client <-> worker, over the invocation stream ------------------------------------------------------


class Hello(NamedTuple):
    """The worker's first frame after the token: when it started, and how many calls it runs at once."""

    kind: Literal["hello"]
    worker_started: float
    slots: int


class Run(NamedTuple):
    """Run the calls at `indices` of one blob; `package` is None when the worker should already hold it."""

    kind: Literal["run"]
    name: str
    version: str
    package: Package | None
    blob: bytes
    indices: list[int]
    timeout: float
    memory: int
    max_output: int
    secrets: dict[str, str] | None
    # Clients of before --isolation and faas.call.max-bytes sent neither: these defaults stand in.
    isolation: str = "warm"
    max_result: int = 2**62


class Answers(NamedTuple):
    """Answers so far, each with its call's index; more frames follow."""

    kind: Literal["answers"]
    answers: list[tuple[int, Answer]]


class Done(NamedTuple):
    """The last answers of a Run: nothing more comes for it."""

    kind: Literal["done"]
    answers: list[tuple[int, Answer]]


class Output(NamedTuple):
    """New output of a call still running, and the bytes of its output dropped so far."""

    kind: Literal["output"]
    call_index: int
    segments: Segments
    dropped: int


class Missing(NamedTuple):
    """The receiver does not hold the function's package: send the request again with it."""

    kind: Literal["missing"]


# What a worker sends back on a Run.
WorkerFrame = Answers | Done | Output | Missing

# -- worker <-> sandbox, over the sandbox's socket -----------------------------------------------------


class Ready(NamedTuple):
    """The sandbox's first message: it is up, with this process id."""

    kind: Literal["ready"]
    pid: int


class SandboxRun(NamedTuple):
    """Run the calls at `indices` of one blob in the sandbox, one message back per index."""

    kind: Literal["run"]
    version: str
    package: Package | None
    blob: bytes
    indices: list[int]
    memory: int
    max_output: int
    secrets: dict[str, str] | None
    isolation: str
    max_result: int


# What a sandbox sends while it runs a SandboxRun.
SandboxMessage = Answer | Output | Missing
