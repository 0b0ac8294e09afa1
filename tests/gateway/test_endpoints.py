"""The HTTP contract as plain Python, without Tornado: requests' parts in, statuses and bodies out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import dask
import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import from_cell
from jupyter_faas.dispatch.platform import Platform
from jupyter_faas.gateway.service import Endpoints, HttpError
from jupyter_faas.record.registry import Registry

JSON = "application/json"


@pytest.fixture
def endpoints(platform: Platform, tmp_path: Path) -> Any:
    registry = Registry(None)
    for source, name, params, limits in [
        ("x * x", "square", ["x:int"], {}),
        ("raise KeyError(key)", "fails", ["key"], {"retries": "1"}),
        ("len(data)", "size", ["data:bytes"], {}),
    ]:
        registry.deploy(from_cell(source, {}, Limits.resolve(**limits), name=name, params=params))
    made = Endpoints(platform, registry, tmp_path / "state", url="http://example.test/")
    yield made
    made.close()


def status_of(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HttpError) as raised:
        call()
    return raised.value.status, raised.value.body()["error"]


def test_arguments_from_json_objects_arrays_and_raw_bytes(endpoints: Endpoints) -> None:
    assert asyncio.run(endpoints.invoke("square", JSON, b'{"x": 6}')).body == 36
    assert asyncio.run(endpoints.invoke("square", JSON, b"[5]")).body == 25
    assert asyncio.run(endpoints.invoke("size", "image/png", b"\x00" * 10)).body == 10
    # No Content-Type at all is read as JSON.
    assert asyncio.run(endpoints.invoke("square", "", b'{"x": 2}')).body == 4


@pytest.mark.parametrize(
    ("name", "content_type", "body", "status", "kind"),
    [
        ("square", JSON, b"{", 400, "InvalidJSON"),
        ("nothing", JSON, b"{}", 404, "NotFound"),
        ("square", JSON, b"7", 422, "ArgumentError"),
        ("square", JSON, b'{"x": true}', 422, "ArgumentError"),
        ("square", JSON, b'{"x": 1.5}', 422, "ArgumentError"),
        ("square", "text/plain", b"7", 422, "ArgumentError"),
    ],
)
def test_requests_that_cannot_become_a_call(
    endpoints: Endpoints, name: str, content_type: str, body: bytes, status: int, kind: str
) -> None:
    got_status, error = status_of(lambda: endpoints.prepare(name, content_type, body))
    assert (got_status, error["type"]) == (status, kind)


def test_the_body_limit_comes_from_config(endpoints: Endpoints) -> None:
    with dask.config.set({"faas.http.max-body": "10B"}):
        status, error = status_of(lambda: endpoints.prepare("size", "image/png", b"x" * 11))
    assert status == 413
    assert "the limit is 10" in error["message"]


def test_tracebacks_only_when_config_allows(endpoints: Endpoints) -> None:
    status, error = status_of(lambda: asyncio.run(endpoints.invoke("fails", JSON, b'{"key": "k"}')))
    assert (status, error["type"]) == (500, "KeyError")
    assert "traceback" not in error
    with dask.config.set({"faas.http.tracebacks": True}):
        status, error = status_of(lambda: asyncio.run(endpoints.invoke("fails", JSON, b'{"key": "k"}')))
    assert "raise KeyError(key)" in error["traceback"]
    assert "jupyter_faas" not in error["traceback"]  # the function's frames only, never the platform's


def test_async_invocations_retry_then_become_dead_letters_on_disk(endpoints: Endpoints, tmp_path: Path) -> None:
    reply = endpoints.invoke_async("fails", JSON, b'{"key": "k"}')
    assert reply.status == 202
    invocation_id = reply.body["id"]
    deadline = time.monotonic() + 30
    while endpoints.invocation(invocation_id)["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert endpoints.invocation(invocation_id)["status"] == "error"
    record = next(r for r in endpoints.platform.records("fails") if r.id == invocation_id)
    assert record.attempts == 2  # retries=1: two attempts before it became a dead letter
    assert (tmp_path / "state" / "dead-letters.jsonl").is_file()
    assert [letter["input"] for letter in endpoints.dead_letters.list()] == [{"key": "k"}]


def test_describe_lists_signature_limits_url_and_stats(endpoints: Endpoints) -> None:
    asyncio.run(endpoints.invoke("square", JSON, b'{"x": 1}'))
    square = endpoints.function("square")
    assert square["url"] == "http://example.test/faas/functions/square"
    assert square["signature"] == "square(x: int)"
    assert square["stats"]["invocations"] >= 1
    assert [f["name"] for f in endpoints.functions()] == ["fails", "size", "square"]
    state = endpoints.platform_state()
    assert set(state) >= {"workers", "maximum", "idle_timeout_s", "scale_events", "dashboard_link"}
