"""The HTTP contract of a function, standard library only: serve reads requests with it; exports carry a copy.

It imports nothing but the standard library, so an exported function runs where jupyter-faas is not installed
(each export has it as faas_contract.py). The gateway reads arguments and checks types with these same
functions, and tests/export compares the answers of an export with serve's, row for row.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

# faas.http.max-body's default; the platform's own request limit may be lower.
MAX_BODY_BYTES = int(os.environ.get("FAAS_MAX_BODY_BYTES", str(6 * 2**20)))

# How a generator's items go out where the target streams them, as serve does.
NDJSON = "application/x-ndjson"

# JSON types a plain annotation asks for; other annotations are not checked at the door.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


class Answer(NamedTuple):
    """What to send back: a status, its headers and the body's bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class ContractError(Exception):
    """An answer other than success, with the body `{"error": {"type", "message", ...}}`."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.extra = extra

    def answer(self) -> Answer:
        body = {"error": {"type": self.kind, "message": self.message, **self.extra}}
        return Answer(self.status, _headers("application/json"), json.dumps(body).encode())


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "X-Content-Type-Options": "nosniff"}


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    # No Content-Type at all is read as JSON too: that is what a bare `curl -d` sends to most APIs.
    return media in ("", "application/json") or media.endswith("+json")


def annotation_name(annotation: Any) -> str | None:
    """ "int" for int or 'int'; None for annotations that are not a plain builtin type or bytes."""
    if isinstance(annotation, str):
        return annotation if annotation in (*JSON_TYPES, "bytes") else None
    if isinstance(annotation, type) and annotation.__name__ in (*JSON_TYPES, "bytes"):
        return annotation.__name__
    return None


# JSON's own numbers only, each one Python can carry: no NaN or Infinity, nothing that overflows a float,
# no integer longer than Python reads.
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


def read_arguments(name: str, content_type: str, body: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A JSON object as keyword arguments, a JSON array as positional ones, any other body as one bytes value."""
    if not is_json(content_type):
        return (body,), {}
    if not body.strip():
        return (), {}
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_whole)
    except (ValueError, RecursionError) as e:
        raise ContractError(400, "InvalidJSON", f"the request body is not valid JSON: {e}") from None
    if isinstance(data, dict):
        return (), data
    if isinstance(data, list):
        return tuple(data), {}
    raise ContractError(
        422,
        "ArgumentError",
        f"{name}(): send a JSON object of keyword arguments or an array of positional ones, "
        f"not a JSON {type(data).__name__}",
    )


def check_arguments(
    name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    """The arguments bound to the signature, checked against its plain annotations; else a 422 naming the parameter."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        message = str(e)
        named = message.split("'")[1] if "'" in message else None
        raise ContractError(422, "ArgumentError", f"{name}(): {message}", parameter=named) from None
    for parameter_name, value in bound.arguments.items():
        parameter = signature.parameters[parameter_name]
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        expected = annotation_name(parameter.annotation)
        if expected is None:
            continue
        if expected == "bytes":
            ok = isinstance(value, bytes)
        else:
            ok = isinstance(value, JSON_TYPES[expected]) and not (expected != "bool" and isinstance(value, bool))
        if not ok:
            raise ContractError(
                422,
                "ArgumentError",
                f"{name}(): parameter {parameter_name!r} expects {expected}, got {type(value).__name__}",
                parameter=parameter_name,
            )
    return bound


def encode_result(name: str, value: Any) -> Answer:
    """A 200: bytes as application/octet-stream, anything else as JSON if JSON can carry it."""
    if isinstance(value, bytes | bytearray | memoryview):
        return Answer(200, _headers("application/octet-stream"), bytes(value))
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise ContractError(
            500,
            "ResultNotJSON",
            f"{name} returned a {type(value).__name__} that JSON cannot carry ({e}); "
            "return a dict, list, str, number, bool, None or bytes",
        ) from None
    return Answer(200, _headers("application/json"), text.encode())


class Warm:
    """A class function's instance, made and set up once per process at its first use, as a sandbox does."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.instance: Any = None
        self._lock = threading.Lock()

    def ready(self) -> Any:
        """The set-up instance; a setup() that raises keeps none, so the next call tries again."""
        with self._lock:
            if self.instance is None:
                instance = self.cls()
                setup = getattr(instance, "setup", None)
                if callable(setup):
                    setup()
                self.instance = instance
            return self.instance

    def teardown(self) -> None:
        with self._lock:
            instance, self.instance = self.instance, None
        hook = getattr(instance, "teardown", None)
        if callable(hook):
            hook()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ready()(*args, **kwargs)


def callable_signature(function: Any) -> inspect.Signature:
    """What callers pass: a function's parameters, or a warm class's `__call__` without self."""
    if isinstance(function, Warm):
        signature = inspect.signature(function.cls.__dict__["__call__"])
        return signature.replace(parameters=list(signature.parameters.values())[1:])
    return inspect.signature(function)


async def _collect_async(items: Any) -> list[Any]:
    return [item async for item in items]


def settle(value: Any) -> Any:
    """A call's value as one value: a coroutine awaited, a generator's items collected into a list."""
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    if inspect.isasyncgen(value):
        return asyncio.run(_collect_async(value))
    if inspect.isgenerator(value):
        return list(value)
    return value


def _gather(items: Any, into: list[Any]) -> Any:
    """Append a generator's items to `into` as they come; for an async one, the coroutine that does."""
    if inspect.isasyncgen(items):

        async def gather_async() -> None:
            async for item in items:
                into.append(item)

        return gather_async()
    for item in items:
        into.append(item)
    return None


def _raised(name: str, error: Exception) -> ContractError:
    """What the caller learns of the function's own exception: its type and message; the log gets the traceback."""
    traceback.print_exception(error, file=sys.stderr)
    kind = type(error).__name__
    message = str(error)
    return ContractError(500, kind, f"{name} raised {kind}: {message}" if message else f"{name} raised {kind}")


def ndjson(name: str, items: list[Any], failure: ContractError | None = None) -> Answer:
    """A generator's items as `serve` streams them: one JSON line each, or the bytes themselves when the first item
    is bytes; a failure after the first item is a last line `{"error": ...}`."""
    chunks = []
    for item in items:
        if isinstance(item, bytes | bytearray | memoryview):
            chunks.append(bytes(item))
            continue
        try:
            chunks.append(encode_result(name, item).body + b"\n")
        except ContractError as error:
            failure = error
            break
    if failure is not None:
        if not chunks:
            return failure.answer()
        chunks.append(failure.answer().body + b"\n")
    first_is_bytes = bool(items) and isinstance(items[0], bytes | bytearray | memoryview)
    return Answer(200, _headers("application/octet-stream" if first_is_bytes else NDJSON), b"".join(chunks))


def missing_secrets(name: str, secrets: Iterable[str]) -> None:
    """Every declared secret is set in this process's environment, or a 500 naming the missing ones."""
    missing = [secret for secret in secrets if secret not in os.environ]
    if missing:
        raise ContractError(
            500,
            "MissingSecret",
            f"{name} needs the secret {', '.join(missing)}, which is not set in the environment of this "
            "function: set it in the platform's configuration, then call again",
        )


def answer(
    function: Callable[..., Any],
    name: str,
    method: str,
    content_type: str,
    body: bytes,
    secrets: Iterable[str] = (),
    stream: bool = False,
) -> Answer:
    """The answer `jupyter faas serve` gives to this request for `name`: run the function, or say why not.

    An async function is awaited; a generator's items come as NDJSON when `stream`, else as one JSON array.
    """
    try:
        if method.upper() != "POST":
            raise ContractError(405, "MethodNotAllowed", "Method Not Allowed")
        if len(body) > MAX_BODY_BYTES:
            raise ContractError(413, "PayloadTooLarge", f"the request body is over the limit of {MAX_BODY_BYTES} bytes")
        args, kwargs = read_arguments(name, content_type, body)
        try:
            check_arguments(name, callable_signature(function), args, kwargs)
        except ContractError as e:
            if not is_json(content_type):
                e.message += (
                    f" (with Content-Type {content_type.split(';')[0]!r} the body is passed as bytes to the first "
                    "parameter; send Content-Type: application/json to pass JSON arguments)"
                )
            raise
        missing_secrets(name, secrets)
        items: list[Any] = []
        try:
            value = function(*args, **kwargs)
            if stream and (inspect.isgenerator(value) or inspect.isasyncgen(value)):
                # Items are gathered one by one, so those before a failure are still sent, as serve sends them.
                settle(_gather(value, items))
                return ndjson(name, items)
            value = settle(value)
        except Exception as error:
            failure = _raised(name, error)
            if not items:
                raise failure from None
            return ndjson(name, items, failure)
        return encode_result(name, value)
    except ContractError as e:
        return e.answer()
