"""The messages of the invocation protocol, as types: client and worker frames, worker and sandbox messages.

Each is a plain tuple whose first item is a Literal tag (an answer's is its status), so mypy narrows a
union of them on `message[0] == ...`. Plain tuples because these are pickled on every invocation's path,
and pickling a NamedTuple costs several times as much. Client and worker run the same version (the
version check makes sure); a worker still accepts a Run without the items older clients did not send.
"""

from __future__ import annotations

from typing import Literal

from jupyter_faas.worker.capture import Segments

# How an attempt ended on the worker: "timeout" and "memory" also when the worker stopped the call.
AnswerStatus = Literal["ok", "error", "memory", "timeout"]
# (type name, message, traceback text, the pickled exception or None): an error as it travels.
ErrorInfo = tuple[str, str, str, bytes | None]
# (segments not yet streamed, bytes dropped): the rest of an invocation's output, sent with its answer.
TrailingOutput = tuple[Segments, int]
# What a function is shipped as: (cloudpickled function, file name, source, reusable).
Package = tuple[bytes, str, str, bool]

# (status, value, started, finished, fresh, peak memory, error): how one call ended, in the sandbox.
Result = tuple[AnswerStatus, bytes, float, float, bool, int | None, ErrorInfo | None]
# A Result and its trailing output (None when nothing was captured): one invocation's answer.
Answer = tuple[AnswerStatus, bytes, float, float, bool, int | None, ErrorInfo | None, TrailingOutput | None]

# -- client <-> worker, over the invocation stream ------------------------------------------------------

# The worker's first frame after the token: ("hello", when the worker started, slots).
Hello = tuple[Literal["hello"], float, int]
# ("run", name, version, package or None if the worker should hold it, blob, indices, timeout, memory,
# max_output, secrets, isolation, max_result). Clients of before --isolation and faas.call.max-bytes sent
# neither of the last two.
Run = tuple[
    Literal["run"], str, str, Package | None, bytes, list[int], float, int, int, dict[str, str] | None, str, int
]
# A Run with its extras (see RunExtras below): what clients since warm classes and --inputs send.
RunWithExtras = tuple[
    Literal["run"], str, str, Package | None, bytes, list[int], float, int, int, dict[str, str] | None, str, int,
    dict[str, float | str],
]  # fmt: skip
# Answers so far, each with its call's index; more frames follow.
Answers = tuple[Literal["answers"], list[tuple[int, Answer]]]
# The last answers of a Run: nothing more comes for it.
Done = tuple[Literal["done"], list[tuple[int, Answer]]]
# ("output", index, segments, bytes dropped so far): new output of a call still running.
Output = tuple[Literal["output"], int, Segments, int]
# The receiver lacks the function's package: send the request again with it.
Missing = tuple[Literal["missing"]]
# What a call made inside an invocation asks for: one call, a map of many, or one queued call.
ChildKind = Literal["invoke", "map", "enqueue"]
# ("call", index of the invocation making it, request id, seconds it has left, kind, the new invocation's
# id ("" for a map), the cloudpickled FunctionDefinition, the packed calls): a call made inside a running
# invocation, for the platform to run.
ChildCall = tuple[Literal["call"], int, int, float, ChildKind, str, bytes, bytes]
# What a worker sends back on a Run.
WorkerFrame = Answers | Done | Output | Missing | ChildCall
# ("reply", request id, the cloudpickled ChildResult): the platform's answer to a ChildCall, which the
# worker passes on to the sandbox as it is.
ChildReply = tuple[Literal["reply"], int, bytes]
# What a ChildReply carries: ("ok", value, invocation ids) or ("error", exception, invocation ids).
ChildResult = tuple[Literal["ok", "error"], object, list[str]]
# ("stop", index): the caller of the invocation at index has left (it closed its stream of items): the worker
# stops that invocation if it is running, and drops the message otherwise.
StopCall = tuple[Literal["stop"], int]
# What the client sends on a stream while a Run is going: answers to its calls, and stops.
ToWorker = ChildReply | StopCall

# -- worker <-> sandbox, over the sandbox's socket -----------------------------------------------------

# The sandbox's first message: ("ready", its process id).
Ready = tuple[Literal["ready"], int]
# ("run", version, package or None, blob, indices, memory, max_output, secrets, isolation, max_result).
SandboxRun = tuple[
    Literal["run"],
    str,
    Package | None,
    bytes,
    list[int],
    int,
    int,
    dict[str, str] | None,
    str,
    int,
    dict[str, float | str],
]
# ("call", request id, kind, new invocation's id, definition, calls): a call the running invocation makes;
# the worker adds the invocation's index and the time it has left, and passes it on as a ChildCall.
SandboxCall = tuple[Literal["call"], int, ChildKind, str, bytes, bytes]
# What a sandbox sends while it runs a SandboxRun: one Answer per index.
SandboxMessage = Answer | Output | Missing | SandboxCall
# What a worker sends a sandbox: work, or the answer to a call one of its invocations made.
ToSandbox = SandboxRun | ChildReply

# -- warm state, async and streams ------------------------------------------------------------------

# What a Run (its thirteenth item) and a SandboxRun (its eleventh) may add: "setup_timeout" (seconds a warm
# class's setup() may take), "inputs" (calls of an async function one sandbox runs at once), "timeout"; and to
# a sandbox, "name" (the function's: a new version of it replaces the old one's warm instance).
RunExtras = dict[str, float | str]
# sandbox -> worker: ("setup", index): setup() starts before the call at index; its own limit holds until "init".
SetupStarted = tuple[Literal["setup"], int]
# sandbox -> worker -> client: ("init", index, milliseconds setup() took), whether it raised or not.
InitDone = tuple[Literal["init"], int, float]
# sandbox -> worker -> client: ("item", index, pickled item, unix time it was yielded): one generator item.
Item = tuple[Literal["item"], int, bytes, float]
# sandbox -> worker: ("answer-at", index, answer): an answer of calls run at once, which may end in any order.
IndexedAnswer = tuple[Literal["answer-at"], int, Answer]
# What the worker passes on to the client as it comes, besides answers and output.
StreamEvent = InitDone | Item
