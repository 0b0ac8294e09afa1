"""A generator's answer over HTTP: its items as they come, as NDJSON (or raw bytes), or as Server-Sent Events."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from tornado import iostream, web

from jupyter_faas.dispatch.streams import ItemStream
from jupyter_faas.gateway.answers import HttpError, encode_result, error_for

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"

_NOTHING = object()


def wants_events(accept: str) -> bool:
    """Whether the caller asked for Server-Sent Events (`Accept: text/event-stream`)."""
    return any(part.split(";")[0].strip().lower() == EVENT_STREAM for part in accept.split(","))


def _chunk(name: str, item: Any, events: bool) -> bytes:
    """One item as it goes on the wire: a JSON line, an SSE event, or (bytes, not as SSE) the bytes themselves."""
    value = encode_result(name, item)
    if isinstance(value, bytes):
        if not events:
            return value
        return b"event: bytes\ndata: " + base64.b64encode(value) + b"\n\n"
    text = json.dumps(value, allow_nan=False)
    return f"data: {text}\n\n".encode() if events else f"{text}\n".encode()


def _error_chunk(name: str, error: BaseException, events: bool) -> bytes:
    """How a stream that already began says it failed: a last line {"error": ...}, or an `event: error`."""
    body = error_for(name, error).body()
    text = json.dumps(body)
    return f"event: error\ndata: {text}\n\n".encode() if events else f"{text}\n".encode()


async def answer(handler: web.RequestHandler, name: str, stream: ItemStream, events: bool) -> None:
    """Write the stream's items as they come. A failure before the first item is an ordinary error answer
    (raised here as HttpError); after it, the stream ends with an error line or event."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = _NOTHING
    except Exception as error:
        raise error_for(name, error) from None
    handler.set_status(200)
    if events:
        handler.set_header("Content-Type", EVENT_STREAM)
        handler.set_header("Cache-Control", "no-cache")
    elif isinstance(first, bytes | bytearray | memoryview):
        handler.set_header("Content-Type", "application/octet-stream")
    else:
        handler.set_header("Content-Type", NDJSON)
    # No proxy in between should hold items back.
    handler.set_header("X-Accel-Buffering", "no")
    try:
        if first is not _NOTHING:
            await _send(handler, _chunk(name, first, events))
            async for item in iterator:
                await _send(handler, _chunk(name, item, events))
    except iostream.StreamClosedError:
        stream.close()  # the caller left: what the function still yields is dropped
        return
    except HttpError as error:
        # An item JSON cannot carry: the stream ends there, saying so.
        handler.write(_error_chunk(name, error, events))
        stream.close()
    except Exception as error:
        handler.write(_error_chunk(name, error, events))
    with contextlib.suppress(iostream.StreamClosedError):
        await handler.finish()


async def _send(handler: web.RequestHandler, chunk: bytes) -> None:
    handler.write(chunk)
    # Each item leaves now, as one chunk of the chunked answer.
    await handler.flush()
