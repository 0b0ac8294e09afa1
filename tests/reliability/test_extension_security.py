"""Security defaults of the server extension in a real Jupyter server (pytest-jupyter): auth, CORS, headers,
request ids that are invocation ids, and a private state dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import from_cell
from jupyter_faas.dispatch import platform as _platform
from jupyter_faas.record.registry import Registry

ROUTES = [
    ("POST", ("faas", "functions", "square")),
    ("GET", ("faas", "api", "functions")),
    ("GET", ("faas", "api", "functions", "square")),
    ("DELETE", ("faas", "api", "functions", "square")),
    ("GET", ("faas", "api", "functions", "square", "invocations")),
    ("GET", ("faas", "api", "platform")),
    ("GET", ("faas", "api", "invocations", "some-id")),
    ("GET", ("faas", "api", "dead-letters")),
    ("DELETE", ("faas", "api", "dead-letters", "some-id")),
    ("POST", ("faas", "api", "dead-letters", "some-id", "replay")),
    ("GET", ("faas", "api", "triggers")),
    ("GET", ("faas", "api", "openapi.json")),
    ("GET", ("faas", "metrics")),
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir of the test's own, under umask 0 while the server runs: every mode it gets is set on purpose."""
    _platform.current(start=False).shutdown()
    state = tmp_path / "faas-state"
    before = os.umask(0)
    try:
        with dask.config.set({"faas.state-dir": str(state), "faas.cluster.idle-timeout": "60s"}):
            yield state
            _platform.current(start=False).shutdown()
    finally:
        os.umask(before)


@pytest.fixture
def jp_server_config(state_dir: Path) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_faas": True}}}


@pytest.fixture
def deployed(jp_serverapp: Any, state_dir: Path) -> list[str]:
    """Functions deployed into the server's registry as a kernel of that server does, through the registry folder."""
    registry = Registry(state_dir / "registry")
    limits = Limits.resolve()
    registry.deploy(from_cell("x * x", {}, limits, name="square", params=["x:int"]))
    registry.deploy(from_cell("raise ValueError('boom on purpose')", {}, limits, name="boom"))
    registry.deploy(from_cell("raise ValueError(len(data))", {}, limits, name="reject", params=["data:bytes"]))
    return ["square", "boom", "reject"]


async def fetch(jp_fetch: Any, method: str, parts: tuple[str, ...], **kwargs: Any) -> Any:
    """An answer, whatever its status; a body for the methods that take one."""
    if method in ("POST", "PUT", "PATCH"):
        kwargs.setdefault("body", json.dumps({"x": 2}))
        # Tornado's client would send a form's Content-Type otherwise.
        kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
    else:
        kwargs.pop("body", None)
    return await jp_fetch(*parts, method=method, raise_error=False, **kwargs)


def check_headers(response: Any) -> str:
    headers = response.headers
    assert headers.get("X-Content-Type-Options") == "nosniff", dict(headers)
    assert "Server" not in headers, dict(headers)
    assert not [name for name in headers if name.lower().startswith("access-control-")], dict(headers)
    request_id = headers["X-Request-Id"]
    assert request_id
    return request_id


def body(response: Any) -> Any:
    return json.loads(response.body.decode())


async def test_every_route_but_health_needs_the_servers_auth(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    no_token = {"Authorization": ""}
    for method, parts in ROUTES:
        response = await fetch(jp_fetch, method, parts, headers=dict(no_token))
        assert response.code == 403, (method, parts)
        assert body(response)["error"]["type"] == "Forbidden"
        check_headers(response)
        wrong = await fetch(jp_fetch, method, parts, headers={"Authorization": "token wrong-token"})
        assert wrong.code == 403, (method, parts)
    health = await fetch(jp_fetch, "GET", ("faas", "api", "health"), headers=dict(no_token))
    assert body(health) == {"status": "ok"}
    # Nothing a refused request asked for happened.
    assert (await fetch(jp_fetch, "GET", ("faas", "api", "functions", "square"))).code == 200


async def test_no_cors_unless_configured_even_for_token_requests(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    for method, parts in [*ROUTES, ("GET", ("faas", "api", "health"))]:
        if method == "DELETE":
            parts = tuple(part.replace("square", "not_deployed") for part in parts)
        # jupyter_server itself would echo the Origin to a token-authenticated request; the faas routes do not.
        response = await fetch(jp_fetch, method, parts, headers=dict(origin))
        check_headers(response)
        preflight = await fetch(
            jp_fetch,
            "OPTIONS",
            parts,
            headers={
                **origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.code == 405, parts
        check_headers(preflight)


async def test_every_answer_has_nosniff_a_request_id_and_no_server_banner(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    answers = [
        await fetch(jp_fetch, "POST", ("faas", "functions", "square")),  # 200
        await fetch(jp_fetch, "POST", ("faas", "functions", "square"), body="{"),  # 400
        await fetch(jp_fetch, "POST", ("faas", "functions", "square"), headers={"Authorization": ""}),  # 403
        await fetch(jp_fetch, "POST", ("faas", "functions", "nothing_here")),  # 404
        await fetch(jp_fetch, "GET", ("faas", "no", "such", "path")),  # 404 outside the routes
        await fetch(jp_fetch, "GET", ("faas", "functions", "square")),  # 405
        await fetch(jp_fetch, "PUT", ("faas", "api", "functions")),  # 405
        await fetch(
            jp_fetch, "POST", ("faas", "functions", "reject"), body=b"x" * (6 * 2**20 + 1),
            headers={"Content-Type": "application/octet-stream"},
        ),  # 413
        await fetch(jp_fetch, "POST", ("faas", "functions", "square"), body=json.dumps({"x": "two"})),  # 422
        await fetch(jp_fetch, "GET", ("faas", "api", "functions"), headers={"X-Padding": "p" * 40_000}),  # 431
        await fetch(jp_fetch, "POST", ("faas", "functions", "boom"), body="{}"),  # 500, the function's own
        await fetch(jp_fetch, "GET", ("faas", "metrics")),
        await fetch(jp_fetch, "GET", ("faas", "api", "health")),
        *[await fetch(jp_fetch, method, parts) for method, parts in ROUTES if method == "GET"],
    ]  # fmt: skip
    assert {a.code for a in answers} >= {200, 400, 403, 404, 405, 413, 422, 431, 500}
    ids = [check_headers(answer) for answer in answers]
    assert len(set(ids)) == len(ids)
    for answer in answers:
        if answer.code >= 400:
            assert set(body(answer)) == {"error"}, answer.body


async def test_undeploying_a_name_no_function_can_have_is_404_not_500(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    # The registry on disk refuses such names as file names; that was a gateway 500 (RegistryError).
    for name in ("9lives", "not%20valid", "class", "__init__", "%2E%2E"):
        response = await fetch(jp_fetch, "DELETE", ("faas", "api", "functions", name))
        assert response.code == 404, (name, response.body)
        assert body(response)["error"]["type"] == "NotFound"
    assert (await fetch(jp_fetch, "GET", ("faas", "api", "functions", "square"))).code == 200


async def records_of(jp_fetch: Any, name: str) -> dict[str, Any]:
    response = await jp_fetch("faas", "api", "functions", name, "invocations", params={"limit": "1000"})
    return {record["id"]: record for record in body(response)["invocations"]}


async def settle(jp_fetch: Any, invocation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        state = body(await jp_fetch("faas", "api", "invocations", invocation_id))
        if state["status"] not in ("queued", "running"):
            return state
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)


async def test_the_request_id_of_an_invocation_is_its_record_id(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    ok = await fetch(jp_fetch, "POST", ("faas", "functions", "square"), body=json.dumps({"x": 9}))
    assert body(ok) == 81
    assert (await records_of(jp_fetch, "square"))[check_headers(ok)]["status"] == "ok"
    failed = await fetch(jp_fetch, "POST", ("faas", "functions", "boom"), body="{}")
    assert failed.code == 500
    assert (await records_of(jp_fetch, "boom"))[check_headers(failed)]["error"] == "ValueError"
    queued = await fetch(jp_fetch, "POST", ("faas", "functions", "square"), params={"async": "true"})
    assert body(queued)["id"] == check_headers(queued)
    assert (await settle(jp_fetch, body(queued)["id"]))["result"] == 4


async def test_the_state_dir_is_0700_and_its_files_0600(jp_fetch: Any, deployed: list[str], state_dir: Path) -> None:
    assert body(await fetch(jp_fetch, "POST", ("faas", "functions", "square"))) == 4
    octets = {"Content-Type": "application/octet-stream"}
    queued = await fetch(jp_fetch, "POST", ("faas", "functions", "reject"), body=b"abc", params={"async": "true"},
                         headers=octets)  # fmt: skip
    assert (await settle(jp_fetch, body(queued)["id"]))["status"] == "error"
    _platform.current(start=False).flush_log()
    log = state_dir / "invocations.sqlite"
    # With a connection open, the log's -wal and -shm stay after the platform's next commit.
    with contextlib.closing(sqlite3.connect(f"{log.absolute().as_uri()}?mode=rw", uri=True)) as reader:
        reader.execute("SELECT count(*) FROM invocations").fetchone()
        assert body(await fetch(jp_fetch, "POST", ("faas", "functions", "square"))) == 4
        _platform.current(start=False).flush_log()
        paths = [state_dir, *state_dir.rglob("*")]
        modes = {path: stat.S_IMODE(path.stat().st_mode) for path in paths}
    names = {path.name for path in paths}
    assert {"registry", "versions", "functions", "triggers"} <= names
    assert {"square.json", "dead-letters.jsonl", "invocations.sqlite", "invocations.sqlite-wal"} <= names
    loose = {str(path): oct(mode) for path, mode in modes.items() if mode != (0o700 if path.is_dir() else 0o600)}
    assert not loose


ODD_NAMES = ["a" * 300, "é" * 200, "a b", "..", "x\x00y", "名前" * 60, "9lives"]


async def test_a_long_or_odd_name_is_404_and_no_answer_names_a_local_path(
    jp_fetch: Any, deployed: list[str], state_dir: Path
) -> None:
    # 300 characters made the pointer's file name too long: a 500 that showed the registry's path.
    for name in ODD_NAMES:
        for method, parts in (
            ("POST", ("faas", "functions", name)),
            ("GET", ("faas", "api", "functions", name)),
            ("DELETE", ("faas", "api", "functions", name)),
            ("GET", ("faas", "api", "functions", name, "invocations")),
        ):
            response = await fetch(jp_fetch, method, parts)
            assert response.code == 404, (method, name[:20], response.body[:300])
            assert body(response)["error"]["type"] == "NotFound"
            text = response.body.decode()
            assert str(state_dir) not in text and "Errno" not in text, text[:300]
    assert body(await fetch(jp_fetch, "POST", ("faas", "functions", "square"))) == 4


async def test_a_damaged_registry_is_a_500_that_names_no_path(
    jp_fetch: Any, deployed: list[str], state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (state_dir / "registry" / "functions" / "square.json").write_text("{not json")
    for method, parts in [
        ("POST", ("faas", "functions", "square")),
        ("GET", ("faas", "api", "functions", "square")),
        ("GET", ("faas", "api", "functions")),
        ("GET", ("faas", "api", "openapi.json")),
    ]:
        response = await fetch(jp_fetch, method, parts)
        assert response.code == 500, (parts, response.body)
        error = body(response)["error"]
        assert error["type"] == "RegistryError", error
        assert str(state_dir) not in response.body.decode() and "square.json" not in error["message"], error
    # The server's own log has what the caller does not.
    assert any("square.json" in record.getMessage() for record in caplog.records)


async def test_a_foreign_origin_cannot_drive_a_function_even_with_a_token(
    jp_fetch: Any, jp_http_port: int, deployed: list[str], state_dir: Path
) -> None:
    before = len(await records_of(jp_fetch, "square"))
    for origin in ("http://evil.example", f"http://evil.example:{jp_http_port}", "null"):
        for content_type, payload in (("text/plain", '{"x": 3}'), ("application/x-www-form-urlencoded", "x=3")):
            headers = {"Origin": origin, "Content-Type": content_type}
            response = await fetch(jp_fetch, "POST", ("faas", "functions", "square"), body=payload, headers=headers)
            assert response.code == 403, (origin, response.body)
            assert body(response)["error"]["type"] == "OriginNotAllowed"
        for method, parts in ROUTES:
            response = await fetch(jp_fetch, method, parts, headers={"Origin": origin})
            assert response.code == 403, (origin, parts)
    # A foreign Host (DNS rebinding) is the server's own 403.
    rebound = await fetch(jp_fetch, "POST", ("faas", "functions", "square"), headers={"Host": "evil.example"})
    assert rebound.code == 403
    same = {"Origin": f"http://localhost:{jp_http_port}", "Host": f"localhost:{jp_http_port}"}
    assert body(await fetch(jp_fetch, "POST", ("faas", "functions", "square"), headers=same)) == 4
    assert len(await records_of(jp_fetch, "square")) == before + 1


@pytest.fixture
def small_body_memory(state_dir: Path) -> Iterator[None]:
    """faas.http.max-body-memory of 1 MiB, set before the server (and its extension) starts."""
    with dask.config.set({"faas.http.max-body-memory": "1MiB"}):
        yield


async def test_a_body_past_the_memory_cap_gets_503_before_it_is_read(
    small_body_memory: None,
    jp_fetch: Any,
    jp_http_port: int,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    deployed: list[str],
) -> None:
    reader, writer = await asyncio.open_connection("localhost", jp_http_port)
    try:
        head = [
            f"POST {jp_base_url}faas/functions/reject HTTP/1.1",
            f"Host: localhost:{jp_http_port}",
            *(f"{name}: {value}" for name, value in jp_auth_header.items()),
            "Content-Type: application/octet-stream",
            f"Content-Length: {2 * 2**20}",
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        # Nothing of the 2 MiB body was sent: the answer comes before it.
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"Retry-After: 1" in answer
    # A body within the cap is taken, and reaches the function.
    octets = {"Content-Type": "application/octet-stream"}
    small = await fetch(jp_fetch, "POST", ("faas", "functions", "reject"), body=b"x" * 1000, headers=octets)
    assert small.code == 500 and "1000" in body(small)["error"]["message"], small.body
