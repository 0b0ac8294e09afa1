"""The HTTP contract of deployed functions as plain Python: a request's parts in, a status and a body out."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.definition.signature import JSON_TYPES as _JSON_TYPES
from jupyter_faas.definition.signature import annotation_name, takes_bytes
from jupyter_faas.dispatch.platform import Platform, pack_calls
from jupyter_faas.errors import (
    ArgumentsTooLarge,
    FaasMemoryError,
    FaasTimeout,
    InputRefused,
    MissingSecret,
    NoCapacity,
    QueueFull,
    RegistryError,
    RemoteError,
    RemoteTraceback,
    WorkerLost,
    type_name,
)
from jupyter_faas.gateway.metrics import Metrics
from jupyter_faas.gateway.openapi import document
from jupyter_faas.gateway.triggers import TriggerRunner, TriggerSpec, TriggerStore, read_dropped_file
from jupyter_faas.record.deadletters import DamagedLetter, DeadLetters, dead_letters_path, whole_input
from jupyter_faas.record.inflight import InFlight, inflight_path
from jupyter_faas.record.outcomes import AsyncOutcomes, Dropped
from jupyter_faas.record.registry import Deployment, Registry
from jupyter_faas.units import is_json

log = logging.getLogger("jupyter_faas.endpoints")

# Most records one request for a function's invocations returns.
MAX_LISTED = 1000


class HttpError(Exception):
    """An answer other than success: its status, a short type name and a message for the caller."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        # Sent as the Retry-After header (429, 503), never in the body.
        self.retry_after = retry_after
        self.status = status
        self.kind = kind
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message, **self.extra}}


@dataclass(frozen=True)
class Reply:
    """A successful answer: JSON-able data, or bytes sent as application/octet-stream."""

    status: int
    body: Any


@dataclass
class _Call:
    deployment: Deployment
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    content_type: str
    raw: bytes


@dataclass
class _Pending:
    """An asynchronous invocation not yet settled; once settled, only its outcome is kept (in AsyncOutcomes)."""

    name: str
    future: Future[Any]
    call: _Call
    # Where its input came from, when not the request itself: a file trigger's file, read again on replay.
    source: dict[str, Any] | None = None


def _check_types(call: _Call) -> None:
    signature = call.deployment.definition.signature
    bound = signature.bind(*call.args, **call.kwargs)
    for name, value in bound.arguments.items():
        parameter = signature.parameters[name]
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        expected = annotation_name(parameter.annotation)
        if expected is None:
            continue
        if expected == "bytes":
            ok = isinstance(value, bytes)
        else:
            ok = isinstance(value, _JSON_TYPES[expected]) and not (expected != "bool" and isinstance(value, bool))
        if not ok:
            raise HttpError(
                422,
                "ArgumentError",
                f"{call.deployment.name}(): parameter {name!r} expects {expected}, got {type(value).__name__}",
                parameter=name,
            )


def shown(name: str) -> str:
    """A name from a request, as an answer may quote it: repr'd, and cut short."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + "..."


def registry_failed(error: RegistryError) -> HttpError:
    """A 500 for a registry that cannot be read or written. Its text names local paths: the server's log gets it,
    the caller only the fact."""
    log.error("jupyter-faas: %s", error)
    return HttpError(500, "RegistryError", "the function registry could not be read; see the server log")


def _missing_parameter(message: str) -> str | None:
    """The parameter a signature error names ("missing a required argument: 'x'"), if it names one."""
    if "'" in message:
        return message.split("'")[1]
    return None


class Endpoints:
    """Deployed functions answering requests on one platform: sync, async, dead letters, documents.

    The HTTP handlers of the server extension and of `jupyter faas serve` parse and authorize,
    then call this; nothing here knows about Tornado.
    """

    def __init__(
        self, platform: Platform, registry: Registry, state_dir: Path | None, base_url: str = "/", url: str = ""
    ) -> None:
        self.platform = platform
        self.registry = registry
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        # The full URL clients reach us at, for the URLs we list; the base path alone if unknown.
        self.url = url or self.base_url
        self.dead_letters = DeadLetters(None if state_dir is None else dead_letters_path(state_dir))
        self.in_flight = InFlight(None if state_dir is None else inflight_path(state_dir))
        self._settle_interrupted()
        self.metrics = Metrics(platform, registry)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._outcomes = AsyncOutcomes()
        self._lock = threading.Lock()
        self.triggers: TriggerRunner | None = None
        self._missing: set[tuple[str, str]] = set()
        platform.add_listener(self.metrics.observe)

    def _settle_interrupted(self) -> None:
        """Asynchronous invocations a previous process accepted and never settled become dead letters."""
        for entry in self.in_flight.orphans():
            error = {
                "type": "Interrupted",
                "message": "the server stopped before this invocation finished; replay the dead letter to run it",
            }
            self.dead_letters.add(
                entry["id"], entry["function"], entry["version"], entry["content_type"], entry["body"], error,
                entry.get("source"),
            )  # fmt: skip
            self.in_flight.end(entry["id"])
            log.warning(
                "jupyter-faas: invocation %s of %s was interrupted by a restart", entry["id"], entry["function"]
            )

    def close(self) -> None:
        if self.triggers is not None:
            self.triggers.close()
        self.platform.remove_listener(self.metrics.observe)

    # -- triggers: schedules and file drops, fired from this process ---------------------------------

    def start_triggers(self, store: TriggerStore) -> TriggerRunner:
        self.triggers = TriggerRunner(store, self._launch_trigger, self._trigger_failed, self._takes_bytes)
        return self.triggers.start()

    def _launch_trigger(self, name: str, args: tuple[Any, ...], kind: str, on_done: Any) -> bool:
        try:
            deployment = self.registry.get(name)
        except RegistryError as e:
            log.warning("jupyter-faas: %s trigger of %s cannot run: %s", kind, name, e)
            return False
        if deployment is None:
            if (name, kind) not in self._missing:
                self._missing.add((name, kind))
                log.warning("jupyter-faas: the %s trigger of %s waits: %s is not deployed", kind, name, name)
            return False
        self._missing.discard((name, kind))
        definition = deployment.definition
        if kind == "schedule" and not definition.signature.parameters:
            args = ()  # a function without parameters is called with none
        try:
            blob = pack_calls(name, [(args, {})])
        except (TypeError, ArgumentsTooLarge) as e:
            log.warning("jupyter-faas: %s trigger of %s: %s", kind, name, e)
            return False
        try:
            future = self.platform.invoke(definition, blob, trigger=kind, background=True)
        except (MissingSecret, QueueFull) as e:
            log.warning("jupyter-faas: %s trigger of %s waits: %s", kind, name, e)
            return False
        future.add_done_callback(on_done)
        return True

    def _trigger_failed(self, spec: TriggerSpec, args: tuple[Any, ...], error: BaseException, ident: str) -> None:
        readable = [a.isoformat() if isinstance(a, datetime) else a for a in args]
        body = json.dumps(readable, default=str).encode()
        deployment = self.registry.get(spec.function)
        version = deployment.version if deployment else ""
        if isinstance(error, InputRefused):
            details = {"type": "InputRefused", "message": str(error)}
        else:
            details = self._error_for(spec.function, error).body()["error"]
        # A file event keeps its path, and its replay reads the file again the way the trigger does.
        source = {"trigger": "file", "path": str(args[0])} if spec.kind == "file" else None
        self.dead_letters.add(ident, spec.function, version, "application/json", body, details, source)

    def _takes_bytes(self, name: str) -> bool:
        deployment = self.registry.get(name)
        return deployment is not None and takes_bytes(deployment.definition)

    def trigger_list(self) -> list[dict[str, Any]]:
        return [] if self.triggers is None else self.triggers.list()

    def max_body(self) -> int:
        return _config.http_max_body()

    def url_for(self, name: str) -> str:
        return f"{self.url}faas/functions/{name}"

    # -- invoking ------------------------------------------------------------------------------------

    def _deployment(self, name: str) -> Deployment:
        try:
            deployment = self.registry.get(name)
        except RegistryError as e:
            raise registry_failed(e) from None
        if deployment is None:
            raise HttpError(404, "NotFound", f"no function named {shown(name)} is deployed")
        return deployment

    def prepare(self, name: str, content_type: str, body: bytes) -> _Call:
        """Read a request into a call of the deployed function, or raise the HttpError that answers it."""
        deployment = self._deployment(name)
        limit = _config.http_max_body()
        if len(body) > limit:
            raise HttpError(413, "PayloadTooLarge", f"the request body is {len(body)} bytes; the limit is {limit}")
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if is_json(content_type):
            if body.strip():
                try:
                    data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_whole)
                except (ValueError, RecursionError) as e:
                    raise HttpError(400, "InvalidJSON", f"the request body is not valid JSON: {e}") from None
                if isinstance(data, dict):
                    kwargs = data
                elif isinstance(data, list):
                    args = tuple(data)
                else:
                    raise HttpError(
                        422,
                        "ArgumentError",
                        f"{name}(): send a JSON object of keyword arguments or an array of positional ones, "
                        f"not a JSON {type(data).__name__}",
                    )
        else:
            args = (body,)
        call = _Call(deployment, args, kwargs, content_type, body)
        try:
            try:
                _check_types(call)
            except TypeError as e:
                raise HttpError(422, "ArgumentError", f"{name}(): {e}", parameter=_missing_parameter(str(e))) from None
        except HttpError as e:
            if not is_json(content_type):
                e.message += (
                    f" (with Content-Type {content_type.split(';')[0]!r} the body is passed as bytes to the first "
                    "parameter; send Content-Type: application/json to pass JSON arguments)"
                )
            raise
        return call

    def _submit(self, call: _Call, queue_timeout: float | None, background: bool = False) -> Future[Any]:
        definition = call.deployment.definition
        try:
            blob = pack_calls(definition.name, [(call.args, call.kwargs)])
        except TypeError as e:
            raise HttpError(422, "ArgumentError", str(e)) from None
        except ArgumentsTooLarge as e:
            raise HttpError(413, "PayloadTooLarge", str(e)) from None
        try:
            return self.platform.invoke(
                definition, blob, queue_timeout=queue_timeout, trigger="http", background=background
            )
        except MissingSecret as e:
            raise HttpError(500, "MissingSecret", str(e)) from None
        except QueueFull as e:
            raise HttpError(429, "QueueFull", str(e), retry_after=e.retry_after) from None

    async def invoke(
        self, name: str, content_type: str, body: bytes, on_submit: Callable[[str], None] | None = None
    ) -> Reply:
        """Run the function and wait: 200 with its result, or an HttpError from the table in README.

        `on_submit` is told the invocation's id as soon as it has one (the handler's X-Request-Id).
        """
        call = self.prepare(name, content_type, body)
        future = self._submit(call, _config.http_queue_timeout())
        if on_submit is not None:
            on_submit(future.id)  # type: ignore[attr-defined]
        try:
            value = await asyncio.wrap_future(future)
        except Exception as error:
            raise self._error_for(name, error) from None
        return Reply(200, self._encode(name, value))

    def invoke_async(self, name: str, content_type: str, body: bytes) -> Reply:
        """Queue the invocation and answer 202 with its id at once; it waits for capacity as long as it takes."""
        return self._queue(self.prepare(name, content_type, body))

    def _queue(self, call: _Call, source: dict[str, Any] | None = None) -> Reply:
        future = self._submit(call, None, background=True)
        pending = _Pending(call.deployment.name, future, call, source)
        # Journaled before the 202: an invocation a caller was told about is never silently forgotten.
        invocation_id: str = future.id  # type: ignore[attr-defined]
        deployment = call.deployment
        self.in_flight.begin(invocation_id, deployment.name, deployment.version, call.content_type, call.raw, source)
        with self._lock:
            self._pending[future.id] = pending  # type: ignore[attr-defined]
        future.add_done_callback(lambda _: self._settle(future.id, pending))  # type: ignore[attr-defined]
        return Reply(202, {"id": future.id, "status": "queued"})  # type: ignore[attr-defined]

    def _settle(self, invocation_id: str, pending: _Pending) -> None:
        """Runs when an asynchronous invocation ends; one that failed after its retries is a dead letter."""
        try:
            outcome = self._outcome_of(invocation_id, pending)
            # Kept within its byte budget before it stops being pending: a poll always finds one or the other.
            self._outcomes.keep(invocation_id, outcome, _config.http_async_results_max_bytes())
        finally:
            with self._lock:
                self._pending.pop(invocation_id, None)
            self.in_flight.end(invocation_id)

    def _outcome_of(self, invocation_id: str, pending: _Pending) -> dict[str, Any]:
        outcome: dict[str, Any] = {"function": pending.name}
        try:
            value = pending.future.result()
        except Exception as error:
            http = self._error_for(pending.name, error)
            outcome.update(status=_status_of(error), error=http.body()["error"])
            self.dead_letters.add(
                invocation_id,
                pending.call.deployment.name,
                pending.call.deployment.version,
                pending.call.content_type,
                pending.call.raw,
                outcome["error"],
                pending.source,
            )
            return outcome
        try:
            outcome.update(status="ok", result=_as_json(self._encode(pending.name, value)))
        except HttpError as e:
            outcome.update(status="error", error=e.body()["error"])
        return outcome

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """An asynchronous invocation's state and outcome, or any finished invocation's record, with its output."""
        with self._lock:
            pending = self._pending.get(invocation_id)
        if pending is not None:
            # Still queued or running: polled often, and it has no record yet to look for.
            status = "running" if pending.future.running() else "queued"
            return {"id": invocation_id, "function": pending.name, "status": status}
        outcome = self._outcomes.get(invocation_id)
        if isinstance(outcome, Dropped):
            raise HttpError(
                410, "ResultGone", outcome.message(), invocation_status=outcome.status, function=outcome.function,
                limit="faas.http.async-results-max-bytes",
            )  # fmt: skip
        record = self.platform.find_record(invocation_id)
        if outcome is None:
            if record is not None:
                return _finite(record.to_dict())
            letter = self.dead_letters.get(invocation_id)
            if letter is not None:
                # An invocation that ended as a dead letter before this process knew of it (a restart).
                return {
                    "id": invocation_id,
                    "function": letter["function"],
                    "status": "error",
                    "error": letter["error"],
                }
            raise HttpError(404, "NotFound", f"no invocation {invocation_id!r} is known here")
        answer = {"id": invocation_id, **outcome}
        if record is not None:
            answer["output"] = record.output
            answer["record"] = _finite(record.to_dict())
        return answer

    # -- dead letters: these do file work, so the handlers run them off the event loop ----------------

    def dead_letter_page(self, limit: int, after: str | None, function: str | None = None) -> dict[str, Any]:
        """One page of the list, oldest first (of one function's, if given); see the REST API for the contract."""
        try:
            page = self.dead_letters.page(limit, after, function)
        except ValueError:
            raise HttpError(400, "BadRequest", "after must be the `next` of an earlier page") from None
        return {
            "dead_letters": page.letters,
            "next": page.next,
            "total": page.total,
            "skipped": page.skipped,
            "damaged": page.damaged,
        }

    def dead_letter(self, letter_id: str) -> dict[str, Any]:
        """One letter with its whole input (JSON decoded, other bytes in base64)."""
        letter = self.dead_letters.get(letter_id)
        if letter is None:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")
        try:
            letter["input"] = whole_input(letter["content_type"], self.dead_letters.body(letter_id))
        except KeyError:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}") from None
        except DamagedLetter as e:
            letter["damaged"] = str(e)
        return letter

    def replay(self, letter_id: str) -> Reply:
        """Run the letter's input again, asynchronously: a file event reads its file again, as its trigger does."""
        letter = self.dead_letters.get(letter_id)
        if letter is None:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")
        source = letter.get("source") or {}
        try:
            body = self.dead_letters.body(letter_id)
        except KeyError:
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}") from None
        except DamagedLetter as e:
            raise HttpError(422, "DeadLetterDamaged", f"dead letter {letter_id!r} cannot be replayed: {e}") from None
        deployment = self._deployment(letter["function"])
        if source.get("trigger") == "file" and takes_bytes(deployment.definition):
            path = Path(str(source.get("path")))
            try:
                data = read_dropped_file(path, _config.call_max_bytes())
            except (InputRefused, OSError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise HttpError(
                    422, "DeadLetterDamaged", f"dead letter {letter_id!r} cannot be replayed: {path.name}: {reason}"
                ) from None
            # The file's bytes are the argument; what is journaled (and dead-lettered again) is the path, as before.
            call = _Call(deployment, (data,), {}, letter["content_type"], body)
            try:
                _check_types(call)
            except TypeError as e:
                raise HttpError(422, "ArgumentError", f"{deployment.name}(): {e}") from None
            reply = self._queue(call, source)
        else:
            call = self.prepare(letter["function"], letter["content_type"], body)
            reply = self._queue(call, source or None)
        self.dead_letters.remove(letter_id)
        return reply

    def discard(self, letter_id: str) -> None:
        if not self.dead_letters.remove(letter_id):
            raise HttpError(404, "NotFound", f"no dead letter {letter_id!r}")

    def _encode(self, name: str, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise HttpError(
                500,
                "ResultNotJSON",
                f"{name} returned a {type(value).__name__} that JSON cannot carry ({e}); "
                "return a dict, list, str, number, bool, None or bytes",
            ) from None
        return value

    def _error_for(self, name: str, error: BaseException) -> HttpError:
        if isinstance(error, HttpError):
            return error
        if isinstance(error, NoCapacity):
            return HttpError(503, "NoCapacity", str(error))
        if isinstance(error, FaasTimeout):
            return HttpError(504, "Timeout", str(error))
        if isinstance(error, FaasMemoryError):
            return HttpError(500, "MemoryError", str(error))
        if isinstance(error, WorkerLost):
            return HttpError(500, "WorkerLost", str(error))
        kind = type_name(error)
        message = error.message if isinstance(error, RemoteError) else str(error)
        extra: dict[str, Any] = {}
        cause = error.__cause__
        if isinstance(cause, RemoteTraceback) and _config.http_tracebacks():
            extra["traceback"] = cause.text
        return HttpError(500, kind, f"{name} raised {kind}: {message}" if message else f"{name} raised {kind}", **extra)

    # -- reading -------------------------------------------------------------------------------------

    def describe(self, deployment: Deployment) -> dict[str, Any]:
        definition = deployment.definition
        limits = definition.limits
        return {
            "name": deployment.name,
            "version": deployment.version,
            "deployed_at": deployment.deployed_at,
            "signature": definition.describe_signature(),
            "parameters": [
                {
                    "name": parameter.name,
                    "kind": parameter.kind.name.lower(),
                    "annotation": None
                    if parameter.annotation is inspect.Parameter.empty
                    else _text(parameter.annotation),
                    "required": parameter.default is inspect.Parameter.empty
                    and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD),
                }
                for parameter in definition.signature.parameters.values()
            ],
            "limits": {
                "timeout_s": limits.timeout,
                "memory_bytes": limits.memory,
                "retries": limits.retries,
                "concurrency": limits.concurrency,
            },
            "url": self.url_for(deployment.name),
            "stats": _finite(self.platform.stats(deployment.name)),
            "last_invoked": next((r.submitted for r in self.platform.recent(deployment.name, 1)), None),
        }

    def invocations_of(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The deployed function's newest invocation records on this platform, newest first."""
        self._deployment(name)
        records = self.platform.recent(name, max(0, min(limit, MAX_LISTED)))
        return [_finite(record.to_dict()) for record in reversed(records)]

    def functions(self) -> list[dict[str, Any]]:
        try:
            return [self.describe(deployment) for deployment in self.registry.deployments()]
        except RegistryError as e:
            raise registry_failed(e) from None

    def function(self, name: str) -> dict[str, Any]:
        return self.describe(self._deployment(name))

    def undeploy(self, name: str) -> None:
        try:
            removed = self.registry.undeploy(name)
        except RegistryError as e:
            raise registry_failed(e) from None
        if not removed:
            raise HttpError(404, "NotFound", f"no function named {shown(name)} is deployed")

    def platform_state(self) -> dict[str, Any]:
        platform = self.platform
        return {
            "workers": platform.workers,
            "maximum": platform.maximum,
            "idle_timeout_s": platform.idle_timeout,
            "seconds_to_scale_to_zero": platform.seconds_to_scale_to_zero(),
            "scale_events": [{"time": when, "workers": count} for when, count in platform.scale_events],
            "dashboard_link": platform.dashboard_link or "",
        }

    def openapi(self) -> dict[str, Any]:
        from jupyter_faas import __version__

        try:
            deployments = self.registry.deployments()
        except RegistryError as e:
            raise registry_failed(e) from None
        return document(deployments, self.base_url, __version__)


# JSON's own numbers only, each one Python can carry: no NaN or Infinity, nothing that overflows a float,
# no integer longer than Python reads (4300 digits).
def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is too large for a float")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is too long to read") from None


def _status_of(error: BaseException) -> str:
    if isinstance(error, FaasTimeout):
        return "timeout"
    if isinstance(error, FaasMemoryError):
        return "memory"
    return "error"


def _as_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return value


def _text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


def _finite(stats: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}
