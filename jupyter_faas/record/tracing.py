"""Invocations as OpenTelemetry spans: one per record, a call's under its caller's, in its root's trace."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from jupyter_faas import config as _config
from jupyter_faas.errors import ConfigError
from jupyter_faas.record.records import InvocationRecord

# opentelemetry is an extra (`tracing`): without it this module still imports, and asking for spans says which
# extra to install. Only functions below use these names, never module-level definitions.
try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.trace.span import format_trace_id

    OTEL_MISSING: str | None = None
except ImportError as missing:
    OTEL_MISSING = str(missing)

TRACEPARENT_HEADER = "traceparent"
# Remote parents (a request's traceparent) kept by root invocation id, so that calls that root makes, finishing
# after it, still join the caller's trace. Oldest forgotten first.
KEPT_PARENTS = 10_000
# The OpenTelemetry `faas.trigger` of each of our triggers (semantic conventions: http, pubsub, datasource, timer,
# other).
_OTEL_TRIGGERS = {"http": "http", "schedule": "timer", "file": "datasource", "queue": "pubsub"}


def _digest(kind: bytes, invocation_id: str, size: int) -> int:
    value = int.from_bytes(hashlib.sha256(kind + invocation_id.encode()).digest()[:size], "big")
    return value or 1  # an all-zero id is the invalid one


def span_id_of(invocation_id: str) -> int:
    """The span id of an invocation: derived from its id, so its calls name their parent without asking."""
    return _digest(b"span:", invocation_id, 8)


def trace_id_of(root_id: str) -> int:
    """The trace id of a call tree no request's traceparent started: derived from its root invocation's id."""
    return _digest(b"trace:", root_id, 16)


def _required() -> None:
    if OTEL_MISSING is not None:
        raise ConfigError(
            "faas.tracing.otlp-endpoint is set, but OpenTelemetry is not installed "
            f'({OTEL_MISSING}): pip install "jupyter-faas[tracing]", or unset the key'
        )


class Tracing:
    """Every finished invocation's record becomes one span, with its real start and end, sent to `exporter`.

    A span carries the function's name, version, trigger, status, error type and timings: never its inputs,
    outputs or error messages. A root invocation is in the trace of the `traceparent` its request came with
    (see `follow`), or in a trace of its own; the calls it makes are spans under their caller's, in that trace.
    """

    def __init__(self, exporter: SpanExporter, batch: bool = True, service: str = "jupyter-faas") -> None:
        _required()
        self._processor: SpanProcessor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._resource = Resource.create({"service.name": service})
        self._scope = InstrumentationScope("jupyter_faas")
        self._lock = threading.Lock()
        self._parents: OrderedDict[str, SpanContext] = OrderedDict()

    def follow(self, invocation_id: str, traceparent: str) -> bool:
        """Make a W3C `traceparent` the parent of invocation `invocation_id` (called before it is submitted);
        False, and a trace of its own, if the header is malformed."""
        carrier = {TRACEPARENT_HEADER: traceparent}
        context = TraceContextTextMapPropagator().extract(carrier)
        parent = next(iter(context.values()), None)
        span_context = getattr(parent, "get_span_context", lambda: None)()
        if not isinstance(span_context, SpanContext) or not span_context.is_valid:
            return False
        with self._lock:
            self._parents[invocation_id] = span_context
            while len(self._parents) > KEPT_PARENTS:
                self._parents.popitem(last=False)
        return True

    def trace_id(self, invocation_id: str, root: str | None = None) -> str:
        """The hex trace id of an invocation's span (its root's: a request's traceparent's, or derived)."""
        root_id = root or invocation_id
        with self._lock:
            remote = self._parents.get(root_id)
        return format_trace_id(remote.trace_id if remote is not None else trace_id_of(root_id))

    def observe(self, record: InvocationRecord) -> None:
        """A platform listener: the span of one finished invocation."""
        root_id = record.root or record.id
        with self._lock:
            remote = self._parents.get(root_id)
        if remote is not None and not remote.trace_flags.sampled:
            return  # the caller decided this trace is not recorded
        trace_id = remote.trace_id if remote is not None else trace_id_of(root_id)
        flags = TraceFlags(TraceFlags.SAMPLED)
        parent: SpanContext | None = remote
        if record.parent is not None:
            parent = SpanContext(trace_id, span_id_of(record.parent), is_remote=False, trace_flags=flags)
        context = SpanContext(trace_id, span_id_of(record.id), is_remote=False, trace_flags=flags)
        start = int(record.submitted * 1e9)
        end = start + int(record.latency_ms * 1e6)
        events = []
        if record.started is not None:
            events.append(Event("started", {"faas.coldstart": record.cold_start}, int(record.started * 1e9)))
        failed = record.status != "ok"
        status = Status(StatusCode.ERROR, record.error or record.status) if failed else Status(StatusCode.OK)
        span = ReadableSpan(
            name=record.function,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=_attributes(record),
            events=events,
            kind=SpanKind.SERVER if record.parent is None and record.trigger == "http" else SpanKind.INTERNAL,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(span)

    def flush(self, timeout_ms: int = 30_000) -> bool:
        return self._processor.force_flush(timeout_ms)

    def close(self) -> None:
        """Send what is batched, and stop."""
        self._processor.shutdown()


def _attributes(record: InvocationRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "faas.invocation_id": record.id,
        "faas.name": record.function,
        "faas.version": record.version,
        "faas.trigger": _OTEL_TRIGGERS.get(record.trigger, "other"),
        "faas.coldstart": record.cold_start,
        "jupyter_faas.trigger": record.trigger,
        "jupyter_faas.status": record.status,
        "jupyter_faas.attempts": record.attempts,
        "jupyter_faas.latency_ms": record.latency_ms,
    }
    optional = {
        "jupyter_faas.queued_ms": record.queued_ms,
        "jupyter_faas.duration_ms": record.duration_ms,
        "jupyter_faas.worker": record.worker,
        "jupyter_faas.peak_memory": record.peak_memory,
        "jupyter_faas.parent": record.parent,
        "jupyter_faas.root": record.root,
        "error.type": record.error,
    }
    attributes.update({key: value for key, value in optional.items() if value is not None})
    return attributes


def from_config() -> Tracing | None:
    """Spans over OTLP/HTTP to `faas.tracing.otlp-endpoint`; None if it is not set. ConfigError without the extra."""
    endpoint = _config.tracing_otlp_endpoint()
    if endpoint is None:
        return None
    _required()
    # Imported only when spans are sent: an optional package (and protobuf's import time) no other process needs.
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:  # the SDK without its OTLP exporter
        raise ConfigError(
            f"faas.tracing.otlp-endpoint is set, but the OTLP exporter is not installed ({e}): pip install "
            '"jupyter-faas[tracing]", or unset the key'
        ) from None
    return Tracing(OTLPSpanExporter(endpoint=endpoint))
