"""The HTTP answers, apart from Tornado and the platform: errors, request bodies read into calls, results as JSON."""

from __future__ import annotations

import base64
import inspect
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas import contract as _contract
from jupyter_faas.definition.schema import ArgumentInvalid, validate, validators
from jupyter_faas.errors import (
    FaasMemoryError,
    FaasTimeout,
    NoCapacity,
    RegistryError,
    RemoteError,
    RemoteTraceback,
    WorkerLost,
    type_name,
)
from jupyter_faas.record.outcomes import FailedStatus
from jupyter_faas.record.registry import Deployment

log = logging.getLogger("jupyter_faas.endpoints")


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
class Call:
    """A request read into arguments for one deployed function; `raw` is the body as it came."""

    deployment: Deployment
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    content_type: str
    raw: bytes


def check_types(call: Call) -> None:
    """The arguments fit the signature and its plain annotations, then its richer ones (which convert them);
    else a 422 naming the parameter."""
    signature = call.deployment.definition.signature
    try:
        bound = _contract.check_arguments(call.deployment.name, signature, call.args, call.kwargs)
    except _contract.ContractError as e:
        raise _as_http(e) from None
    if validators(call.deployment.definition).adapters:
        try:
            converted = validate(call.deployment.definition, dict(bound.arguments))
        except ArgumentInvalid as e:
            raise HttpError(422, "ArgumentError", f"{call.deployment.name}(): {e}", parameter=e.parameter) from None
        # The function gets what its annotations ask for: a dataclass, a model, floats for a dict[str, float].
        bound.arguments.update(converted)
        call.args, call.kwargs = bound.args, bound.kwargs


def shown(name: str) -> str:
    """A name from a request, as an answer may quote it: repr'd, and cut short."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + "..."


def registry_failed(error: RegistryError) -> HttpError:
    """A 500 for a registry that cannot be read or written. Its text names local paths: the server's log gets it,
    the caller only the fact."""
    log.error("jupyter-faas: %s", error)
    return HttpError(500, "RegistryError", "the function registry could not be read; see the server log")


def read_arguments(name: str, content_type: str, body: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A request body as (args, kwargs): a JSON array or object of arguments, or any other body as one bytes value."""
    try:
        return _contract.read_arguments(name, content_type, body)
    except _contract.ContractError as e:
        raise _as_http(e) from None


def _as_http(error: _contract.ContractError) -> HttpError:
    """The contract's refusal as the gateway's error: the same status, type, message and fields."""
    return HttpError(error.status, error.kind, error.message, **error.extra)


def encode_result(name: str, value: Any) -> Any:
    """The value as the body of a 200: bytes as they are, anything else only if JSON can carry it."""
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


def error_for(name: str, error: BaseException) -> HttpError:
    """The answer to an invocation of `name` that raised `error`."""
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


def describe_deployment(
    deployment: Deployment, url: str, stats: dict[str, Any], last_invoked: float | None
) -> dict[str, Any]:
    """A deployed function as GET /faas/functions/{name} answers it."""
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
                else annotation_text(parameter.annotation),
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
            # Per caller, over HTTP: "50/s", "10000/day", or None.
            "rate": deployment.rate,
            "quota": deployment.quota,
        },
        "url": url,
        "stats": finite(stats),
        "last_invoked": last_invoked,
    }


def status_of(error: BaseException) -> FailedStatus:
    """The status an asynchronous invocation that raised `error` ends with."""
    if isinstance(error, FaasTimeout):
        return "timeout"
    if isinstance(error, FaasMemoryError):
        return "memory"
    return "error"


def as_json(value: Any) -> Any:
    """A result inside a JSON document: bytes as {\"base64\": ...}."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return value


def annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


def finite(stats: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in stats.items()}
