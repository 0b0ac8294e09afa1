"""Invocations as OpenTelemetry spans, read with the SDK's in-memory exporter: call trees and HTTP traceparents."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dask
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tornado import netutil

from jupyter_faas import function
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.errors import ConfigError
from jupyter_faas.gateway.server import HostPolicy, HttpThread, serve_http
from jupyter_faas.gateway.service import Endpoints
from jupyter_faas.record import tracing as _tracing
from jupyter_faas.record.registry import Registry
from jupyter_faas.record.tracing import Tracing
from tests.helpers import AUTH, start_serve, stop_process_group, wait_for, write_notebook

TOKEN = "owner-token"
# A caller's trace context (the W3C example): this trace, this parent span, sampled.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
# What a caller sends in: it must never reach a span.
SECRET_INPUT = "card-4111111111111111"


@function
def inner(text: str) -> int:
    return len(text)


@function(timeout="60s")
def outer(text: str) -> int:
    return inner(text) + 1


@function
def broken(text: str) -> int:
    raise ValueError(f"refused {text}")


@pytest.fixture
def spans(platform: Platform) -> Iterator[InMemorySpanExporter]:
    """The shared platform, sending each invocation's span to memory (synchronously) for one test."""
    exporter = InMemorySpanExporter()
    platform.use_tracing(Tracing(exporter, batch=False))
    try:
        yield exporter
    finally:
        platform.use_tracing(None)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), [span.name for span in finished]
    return named


def test_a_function_that_calls_another_gives_a_child_span_in_its_trace(spans: InMemorySpanExporter) -> None:
    assert outer(SECRET_INPUT) == len(SECRET_INPUT) + 1
    found = by_name(spans)
    assert set(found) == {"outer", "inner"}
    caller, callee = found["outer"], found["inner"]
    assert caller.context is not None and callee.context is not None and callee.parent is not None
    assert caller.parent is None  # called from the notebook: the top of its own trace
    assert callee.parent.span_id == caller.context.span_id
    assert callee.context.trace_id == caller.context.trace_id
    assert caller.attributes is not None and callee.attributes is not None
    assert callee.attributes["jupyter_faas.parent"] == caller.attributes["faas.invocation_id"]
    # Real times: the callee ran inside its caller's span.
    assert caller.start_time is not None and caller.end_time is not None
    assert callee.start_time is not None and callee.end_time is not None
    assert caller.start_time <= callee.start_time <= callee.end_time <= caller.end_time
    assert (caller.status.status_code, callee.status.status_code) == (StatusCode.OK, StatusCode.OK)
    # Names and timings, never inputs.
    assert not any(SECRET_INPUT in span.to_json() for span in found.values())


def test_a_failed_invocation_is_an_error_span_with_its_type_but_not_its_message(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="refused"):
        broken(SECRET_INPUT)
    span = by_name(spans)["broken"]
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
    assert SECRET_INPUT not in span.to_json()


@pytest.fixture
def http(platform: Platform, spans: InMemorySpanExporter, tmp_path: Path) -> Iterator[str]:
    """serve's HTTP in this process, on 127.0.0.1, in front of `outer` and `inner` deployed."""
    registry = Registry(None)
    registry.deploy(outer._definition)
    registry.deploy(inner._definition)
    sockets = netutil.bind_sockets(0, address="127.0.0.1")
    port = sockets[0].getsockname()[1]
    endpoints = Endpoints(platform, registry, tmp_path / "state", url=f"http://127.0.0.1:{port}/")
    hosts = HostPolicy("127.0.0.1", port)
    server = HttpThread(lambda stop: serve_http(sockets, endpoints, TOKEN, hosts, False, stop), on_failure=lambda: None)
    try:
        yield f"http://127.0.0.1:{port}/faas/functions/"
    finally:
        server.stop()
        endpoints.close()


def post(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
    return httpx.post(url, json={"text": SECRET_INPUT}, headers=headers, timeout=60)


def test_a_request_traceparent_is_the_parent_of_its_invocation_and_of_its_calls(
    http: str, spans: InMemorySpanExporter
) -> None:
    answer = post(http + "outer", {"traceparent": TRACEPARENT})
    assert answer.status_code == 200, answer.text
    found = by_name(spans)
    caller, callee = found["outer"], found["inner"]
    assert caller.context is not None and callee.context is not None
    assert caller.parent is not None and caller.parent.is_remote
    assert f"{caller.parent.trace_id:032x}-{caller.parent.span_id:016x}" == f"{TRACE_ID}-{PARENT_SPAN}"
    assert f"{caller.context.trace_id:032x}" == f"{callee.context.trace_id:032x}" == TRACE_ID
    assert callee.parent is not None and callee.parent.span_id == caller.context.span_id
    assert caller.kind == SpanKind.SERVER and callee.kind == SpanKind.INTERNAL
    assert caller.attributes is not None and caller.attributes["faas.trigger"] == "http"
    assert caller.attributes["faas.invocation_id"] == answer.headers["X-Request-Id"]
    assert not any(SECRET_INPUT in span.to_json() for span in found.values())


def test_an_async_request_joins_the_callers_trace_too(http: str, spans: InMemorySpanExporter) -> None:
    answer = post(http + "inner?async=true", {"traceparent": TRACEPARENT})
    assert answer.status_code == 202, answer.text
    span = wait_for(lambda: by_name(spans).get("inner"), 60, "the async invocation's span")
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_SPAN
    assert span.context is not None and f"{span.context.trace_id:032x}" == TRACE_ID


@pytest.mark.parametrize(
    "header",
    [
        "not a traceparent",
        f"00-{'0' * 32}-{PARENT_SPAN}-01",  # an all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",  # so is an all-zero span id
        f"00-{TRACE_ID}-{PARENT_SPAN}-01-extra",
    ],
)
def test_a_malformed_traceparent_leaves_the_invocation_a_trace_of_its_own(
    http: str, spans: InMemorySpanExporter, header: str
) -> None:
    answer = post(http + "inner", {"traceparent": header})
    assert answer.status_code == 200, answer.text
    span = by_name(spans)["inner"]
    assert span.parent is None
    assert span.context is not None and f"{span.context.trace_id:032x}" != TRACE_ID


def test_a_trace_the_caller_does_not_sample_sends_no_spans(http: str, spans: InMemorySpanExporter) -> None:
    assert post(http + "outer", {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-00"}).status_code == 200
    assert post(http + "inner").status_code == 200  # a later, untraced request still gives its span
    wait_for(lambda: "inner" in by_name(spans), 30, "the untraced request's span")
    assert [span.name for span in spans.get_finished_spans()] == ["inner"]


def test_the_key_sends_spans_over_otlp_and_a_bad_value_stops_the_platform_naming_it() -> None:
    with dask.config.set({"faas.tracing.otlp-endpoint": None}):
        assert _tracing.from_config() is None
    with dask.config.set({"faas.tracing.otlp-endpoint": "http://127.0.0.1:4318/v1/traces"}):
        made = _tracing.from_config()
        assert isinstance(made, Tracing)
        made.close()
    bad = dask.config.set({"faas.tracing.otlp-endpoint": "collector:4318"})
    with bad, pytest.raises(ConfigError, match="faas.tracing.otlp-endpoint"):
        Platform().start()


def test_without_opentelemetry_the_key_names_the_extra_to_install() -> None:
    # A fresh interpreter in which opentelemetry cannot be imported, as in an install without the extra.
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import dask\n"
        "from jupyter_faas.errors import ConfigError\n"
        "from jupyter_faas.record import tracing\n"
        "assert tracing.from_config() is None\n"
        "dask.config.set({'faas.tracing.otlp-endpoint': 'http://127.0.0.1:4318/v1/traces'})\n"
        "try:\n"
        "    tracing.from_config()\n"
        "except ConfigError as e:\n"
        "    print(json.dumps(str(e)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert "faas.tracing.otlp-endpoint" in message and 'pip install "jupyter-faas[tracing]"' in message


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: each export request decoded with OpenTelemetry's own protobuf classes."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:  # http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()


def test_serve_sends_its_spans_to_the_otlp_endpoint_in_the_requests_trace(
    collector: tuple[str, list[ExportTraceServiceRequest]], tmp_path: Path
) -> None:
    endpoint, received = collector
    notebook = write_notebook(
        tmp_path / "traced.ipynb",
        ["%%faas inner text:str\nlen(text)", "%%faas outer text:str\ninner(text) + 1"],
    )
    # The SDK's batch delay, shortened: spans go out within 0.2 s rather than 5 s.
    env = {"DASK_FAAS__TRACING__OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    served = start_serve(notebook, tmp_path / "state", env=env)
    try:
        answer = served.post("outer", json={"text": SECRET_INPUT}, headers={**AUTH, "traceparent": TRACEPARENT})
        assert answer.status_code == 200, answer.text

        def spans() -> dict[str, Any]:
            found = {
                span.name: span
                for request in received
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            }
            return found if {"outer", "inner"} <= set(found) else {}

        found = wait_for(spans, 30, "the spans at the OTLP endpoint")
    finally:
        stop_process_group(served.process)
    caller, callee = found["outer"], found["inner"]
    assert caller.trace_id.hex() == callee.trace_id.hex() == TRACE_ID
    assert caller.parent_span_id.hex() == PARENT_SPAN
    assert callee.parent_span_id == caller.span_id
    attributes = {item.key: item.value.string_value for item in caller.attributes}
    assert attributes["faas.invocation_id"] == answer.headers["X-Request-Id"]
    assert all(SECRET_INPUT.encode() not in request.SerializeToString() for request in received)
