"""Function keys, rate limits, quotas, Idempotency-Key and input schemas: the key store itself, then
`jupyter faas serve` as a real subprocess answering real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import httpx
import pytest
from IPython.core.error import UsageError
from openapi_spec_validator import validate as validate_spec

from jupyter_faas.errors import FunctionKeyError
from jupyter_faas.gateway.keys import OWNER, KeyStore, keys_path
from jupyter_faas.gateway.keyscli import KeysApp
from jupyter_faas.gateway.serve import serve_state
from tests.helpers import (
    AUTH,
    Served,
    error_of,
    faas_shell,
    invocations_of,
    start_serve,
    stop_process_group,
    wait_for,
    wait_for_outcome,
    write_notebook,
)

# Every kind of annotation the door checks with pydantic, defined in the notebook as a user would.
SHAPES = """%%faas
import dataclasses
from typing import Literal, Optional, TypedDict
from pydantic import BaseModel

@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0

class Movie(TypedDict):
    title: str
    year: int

class Order(BaseModel):
    item: str
    quantity: int = 1

def shapes(counts: list[int], weights: dict[str, float], point: Point, movie: Movie, order: Order,
           mode: Literal["fast", "slow"] = "fast", maybe: Optional[int] = None) -> list:
    return [sum(counts), sum(weights.values()), point.x + point.y, movie["year"], order.quantity, mode, maybe,
            type(point).__name__, type(order).__name__]
"""
GOOD_SHAPES = {
    "counts": [1, 2],
    "weights": {"a": 1, "b": 0.5},
    "point": {"x": 2},
    "movie": {"title": "M", "year": 1931},
    "order": {"item": "tea", "quantity": 3},
}

CELLS = [
    "%%faas square x:int --http\nx * x",
    "%%faas cube x:int\nx ** 3",
    # Three calls a minute per caller: the fourth within the minute is refused, and never runs.
    "%%faas limited x:int --rate 3/min\nx",
    "%%faas daily x:int --quota 2/day\nx",
    # A fresh random answer each run: a repeat that ran again would differ.
    "%%faas stamp x:int\nimport uuid\nuuid.uuid4().hex",
    SHAPES,
    "%%faas nap seconds:float\nimport time\ntime.sleep(seconds)\nseconds",
]
ENV = {"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s"}


class Serve:
    """serve of one notebook, restartable on the same state dir."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.notebook = write_notebook(folder / "keys.ipynb", CELLS)
        self.state = folder / "state"
        self.server: Served = start_serve(self.notebook, self.state, env=ENV)

    def restart(self) -> None:
        stop_process_group(self.server.process)
        self.server = start_serve(self.notebook, self.state, env=ENV)

    def stop(self) -> None:
        stop_process_group(self.server.process)

    def keys_command(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "DASK_FAAS__STATE_DIR": str(self.state)}
        return subprocess.run(
            [sys.executable, "-m", "jupyter_faas.cli", "keys", *arguments, "--notebook", str(self.notebook)],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )

    def keys_here(self, capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
        """The same command in this process (a subprocess costs seconds of imports): exit code, stdout, stderr."""
        app = KeysApp()
        code = 0
        with dask.config.set({"faas.state-dir": str(self.state)}):
            try:
                app.initialize([*arguments, "--notebook", str(self.notebook)])
                app.start()
            except SystemExit as e:
                code = int(e.code or 0)
        shown = capsys.readouterr()
        return code, shown.out, shown.err

    def new_key(self, *functions: str) -> dict[str, Any]:
        response = self.server.get("faas/api/keys", headers=AUTH)
        assert response.status_code == 200
        made = httpx.post(
            f"{self.server.url}faas/api/keys", json={"functions": list(functions) or "*"}, headers=AUTH, timeout=30
        )
        assert made.status_code == 201, made.text
        return dict(made.json())


def test_a_key_made_in_one_process_is_found_and_revoked_in_another_at_once(tmp_path: Path) -> None:
    old = os.umask(0)  # so that a file made without an explicit mode would be world-readable
    try:
        kernel, server = KeyStore(keys_path(tmp_path / "state")), KeyStore(keys_path(tmp_path / "state"))
        key, secret = kernel.create(["square"], "for Ada")
    finally:
        os.umask(old)
    found = server.find(secret)
    assert found is not None and found.id == key.id and found.functions == ("square",)
    caller = found.caller()
    assert caller.may_call("square") and not caller.may_call("cube") and not caller.admin
    assert OWNER.admin and OWNER.may_call("anything")
    assert server.find(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert server.find("not-a-key") is None
    assert stat.S_IMODE(keys_path(tmp_path / "state").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert secret not in keys_path(tmp_path / "state").read_text()
    assert server.revoke(key.id) is True
    assert kernel.find(secret) is None and kernel.revoke(key.id) is False
    every, _ = kernel.create("*")
    assert every.functions is None and every.caller().may_call("anything")
    assert [k.id for k in server.listed()] == [every.id]


@pytest.mark.parametrize(
    ("functions", "message"),
    [([], "a list of names"), ("not a name", "not a valid function name"), ([3], "a string, not int"),
     ({"square": 1}, "a list of names"), (["class"], "keyword")],
)  # fmt: skip
def test_a_key_for_what_is_no_function_name_is_refused(tmp_path: Path, functions: Any, message: str) -> None:
    with pytest.raises(FunctionKeyError, match=message):
        KeyStore(keys_path(tmp_path)).create(functions)


def test_a_damaged_key_file_is_an_error_naming_it_never_an_open_door(tmp_path: Path) -> None:
    path = keys_path(tmp_path)
    store = KeyStore(path)
    _, secret = store.create(["square"])
    path.write_text('{"keys": [{"id": 1}]}')
    with pytest.raises(FunctionKeyError, match=str(path)):
        store.find(secret)


def _quietly(post: Any, *args: Any, **kwargs: Any) -> None:
    """A request whose server goes away under it: its connection error is expected."""
    with contextlib.suppress(httpx.HTTPError):
        post(*args, **kwargs)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    running = Serve(tmp_path_factory.mktemp("keys"))
    try:
        assert running.server.post("square", json={"x": 2}, headers=AUTH).json() == 4
        yield running
    finally:
        running.stop()


def test_a_key_calls_its_function_and_nothing_else(serve: Serve) -> None:
    made = serve.new_key("square")
    assert set(made) >= {"id", "key", "functions"} and made["functions"] == ["square"]
    key = made["key"]
    assert key.startswith("fk_")
    server = serve.server
    assert server.post("square", json={"x": 5}, headers=bearer(key)).json() == 25
    before = len(invocations_of(server, "cube"))
    refused = server.post("cube", json={"x": 5}, headers=bearer(key))
    assert refused.status_code == 403 and error_of(refused)["type"] == "Forbidden"
    assert len(invocations_of(server, "cube")) == before  # refused before it ran
    # Not deployed, or not a name at all: the same 403, so a key learns nothing of other functions.
    assert server.post("nothing_here", json={}, headers=bearer(key)).status_code == 403
    for path in ("faas/api/functions", "faas/api/functions/square", "faas/api/keys", "faas/api/openapi.json",
                 "faas/metrics", "faas/api/dead-letters", "faas/api/triggers", "faas/api/platform"):  # fmt: skip
        assert server.get(path, headers=bearer(key)).status_code == 403, path
    made_by_key = httpx.post(f"{server.url}faas/api/keys", json={"functions": "*"}, headers=bearer(key), timeout=30)
    assert made_by_key.status_code == 403  # a key never makes keys
    # The owner's token still reaches everything.
    assert server.post("cube", json={"x": 2}, headers=AUTH).json() == 8


def test_a_key_polls_its_own_async_calls_only(serve: Serve) -> None:
    key = serve.new_key("square")["key"]
    server = serve.server
    queued = server.post("square", params={"async": "true"}, json={"x": 3}, headers=bearer(key))
    assert queued.status_code == 202
    ident = queued.json()["id"]

    def settled() -> dict[str, Any] | None:
        state: dict[str, Any] = server.get(f"faas/api/invocations/{ident}", headers=bearer(key)).json()
        return None if state["status"] in ("queued", "running") else state

    outcome = wait_for(settled, message="the async call to settle")
    assert outcome["result"] == 9
    other = server.post("cube", params={"async": "true"}, json={"x": 3}, headers=AUTH).json()["id"]
    wait_for_outcome(server, other)
    assert server.get(f"faas/api/invocations/{other}", headers=bearer(key)).status_code == 403


def test_a_revoked_key_is_refused_at_once_from_rest_and_from_the_command_line(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve.server
    made = serve.new_key("square")
    assert server.post("square", json={"x": 1}, headers=bearer(made["key"])).status_code == 200
    revoked = httpx.delete(f"{server.url}faas/api/keys/{made['id']}", headers=AUTH, timeout=30)
    assert revoked.status_code == 204
    refused = server.post("square", json={"x": 1}, headers=bearer(made["key"]))
    assert refused.status_code == 403
    assert httpx.delete(f"{server.url}faas/api/keys/{made['id']}", headers=AUTH, timeout=30).status_code == 404

    created = serve.keys_command("create", "square", "--note", "for the CLI test")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split()[0]
    assert secret.startswith("fk_")
    assert server.post("square", json={"x": 4}, headers=bearer(secret)).json() == 16
    code, listed, _ = serve.keys_here(capsys, "list")
    line = next(line for line in listed.splitlines() if "for the CLI test" in line)
    assert code == 0 and secret not in listed
    key_id = line.split()[0]
    assert serve.keys_here(capsys, "revoke", key_id)[0] == 0
    assert server.post("square", json={"x": 4}, headers=bearer(secret)).status_code == 403
    assert serve.keys_here(capsys, "revoke", key_id)[0] == 1
    code, _, error = serve.keys_here(capsys, "create", "not a name")
    assert code == 1 and "not a valid function name" in error
    code, _, error = serve.keys_here(capsys, "create")
    assert code == 2 and "usage" in error


def test_keys_are_stored_hashed_in_a_0600_file_and_the_secret_is_nowhere_on_disk(serve: Serve) -> None:
    made = serve.new_key("square", "cube")
    secret = made["key"]
    assert serve.server.post("cube", json={"x": 3}, headers=bearer(secret)).json() == 27
    with dask.config.set({"faas.state-dir": str(serve.state)}):
        path = serve_state(serve.notebook.resolve()) / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert hashlib.sha256(secret.encode()).hexdigest() in text
    for file in serve.folder.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    listed = serve.server.get("faas/api/keys", headers=AUTH).json()["keys"]
    entry = next(key for key in listed if key["id"] == made["id"])
    assert entry["functions"] == ["cube", "square"] and "key" not in entry and "sha256" not in entry


def test_past_the_rate_the_answer_is_429_with_retry_after_and_the_function_never_ran(serve: Serve) -> None:
    server = serve.server
    key = serve.new_key("limited")["key"]
    statuses = [server.post("limited", json={"x": n}, headers=bearer(key)).status_code for n in range(3)]
    assert statuses == [200, 200, 200]
    refused = server.post("limited", json={"x": 99}, headers=bearer(key))
    assert refused.status_code == 429
    assert error_of(refused)["type"] == "TooManyRequests" and "3 calls per minute" in error_of(refused)["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    # The bucket is per caller: the owner's token has a bucket of its own.
    assert server.post("limited", json={"x": 7}, headers=AUTH).status_code == 200
    ran = [record for record in invocations_of(server, "limited") if record["status"] == "ok"]
    assert len(ran) == 4  # 99 never ran


def test_a_quota_caps_each_key_per_day_and_survives_a_restart(serve: Serve) -> None:
    key = serve.new_key("daily")["key"]
    assert [serve.server.post("daily", json={"x": n}, headers=bearer(key)).status_code for n in range(2)] == [
        200,
        200,
    ]
    refused = serve.server.post("daily", json={"x": 3}, headers=bearer(key))
    assert refused.status_code == 429 and "quota" in error_of(refused)["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    # Idempotency across the same restart: a first request, kept on disk.
    stamp_key = serve.new_key("stamp")["key"]
    stamp_headers = {**bearer(stamp_key), "Idempotency-Key": str(uuid.uuid4())}
    first = serve.server.post("stamp", json={"x": 1}, headers=stamp_headers)
    assert first.status_code == 200
    # A sync request still running when serve stops: its mark is on disk before the answer would be.
    nap_headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}
    cut = threading.Thread(target=lambda: _quietly(serve.server.post, "nap", json={"seconds": 30}, headers=nap_headers))
    marks = serve.state / "serve"
    before = set(marks.rglob("idempotency/*.json"))
    cut.start()
    wait_for(lambda: set(marks.rglob("idempotency/*.json")) - before, message="the running request's mark")

    serve.restart()
    cut.join(timeout=60)
    interrupted = serve.server.post("nap", json={"seconds": 30}, headers=nap_headers)
    # The stop signal reaches serve's workers too: if one dies before serve does, the first request was answered
    # (500 WorkerLost) and that answer was kept; if serve died first, only its mark was (409). Either way the
    # repeat gets the first request's fate, and the function does not run again.
    if interrupted.status_code == 500:
        assert error_of(interrupted)["type"] == "WorkerLost", interrupted.text
    else:
        assert interrupted.status_code == 409, interrupted.text
        assert error_of(interrupted)["type"] == "IdempotencyInterrupted" and error_of(interrupted)["invocation"]
    assert invocations_of(serve.server, "nap") == []  # not run again
    again = serve.server.post("daily", json={"x": 4}, headers=bearer(key))
    assert again.status_code == 429  # a restart hands out no fresh quota
    # The same random value: the answer kept on disk, not a second run (which would draw another).
    repeated = serve.server.post("stamp", json={"x": 1}, headers=stamp_headers)
    assert repeated.status_code == 200 and repeated.json() == first.json()
    assert repeated.headers["Idempotent-Replayed"] == "true"
    assert repeated.headers["X-Request-Id"] == first.headers["X-Request-Id"]


def test_an_idempotency_key_runs_once_sync_and_async_and_refuses_another_body(serve: Serve) -> None:
    server = serve.server
    key = serve.new_key("stamp")["key"]
    headers = {**bearer(key), "Idempotency-Key": "order-" + uuid.uuid4().hex}
    before = len(invocations_of(server, "stamp"))
    answers = [server.post("stamp", json={"x": 1}, headers=headers) for _ in range(3)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.json() for a in answers}) == 1
    other = server.post("stamp", json={"x": 2}, headers=headers)
    assert other.status_code == 422 and error_of(other)["type"] == "IdempotencyKeyReused"
    as_async = server.post("stamp", params={"async": "true"}, json={"x": 1}, headers=headers)
    assert as_async.status_code == 422  # sync and async are different requests
    assert len(invocations_of(server, "stamp")) == before + 1

    queued_headers = {**bearer(key), "Idempotency-Key": uuid.uuid4().hex}
    ids = {
        server.post("stamp", params={"async": "true"}, json={"x": 5}, headers=queued_headers).json()["id"]
        for _ in range(3)
    }
    assert len(ids) == 1
    wait_for_outcome(server, ids.pop())
    assert len(invocations_of(server, "stamp")) == before + 2
    # Another caller's same key is its own request: keys are per caller.
    owner = server.post("stamp", json={"x": 1}, headers={**AUTH, "Idempotency-Key": headers["Idempotency-Key"]})
    assert owner.status_code == 200 and owner.json() != answers[0].json()


def test_concurrent_repeats_wait_for_the_first_and_it_runs_once(serve: Serve) -> None:
    server = serve.server
    headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}
    before = len(invocations_of(server, "stamp"))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = f"{server.url}faas/functions/stamp"
            return await asyncio.gather(*(client.post(url, json={"x": 8}, headers=headers) for _ in range(8)))

    answers = asyncio.run(burst())
    assert {a.status_code for a in answers} == {200}
    assert len({a.json() for a in answers}) == 1
    assert len(invocations_of(server, "stamp")) == before + 1


def test_the_keys_route_refuses_bad_bodies_with_clear_errors(serve: Serve) -> None:
    url = f"{serve.server.url}faas/api/keys"
    bodies = [
        (b"{", 400), (b"[" * 70000, 413), (b"[" * 60000, 400), (b"[]", 422), (b'{"functions": []}', 422),
        (b'{"functions": ["a b"]}', 422), (b'{"note": "x"}', 422),
    ]  # fmt: skip
    for body, status in bodies:
        response = httpx.post(url, content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
        assert response.status_code == status, (body[:20], response.text)
        error_of(response)


def test_an_idempotency_key_that_is_too_long_is_400(serve: Serve) -> None:
    response = serve.server.post("stamp", json={"x": 1}, headers={**AUTH, "Idempotency-Key": "k" * 300})
    assert response.status_code == 400 and "Idempotency-Key" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--rate fast", "--rate: expected calls per unit like 50/s"),
        ("--quota 5/hour", "--quota: expected calls per day"),
    ],
)
def test_bad_rate_and_quota_on_the_magic_line_are_refused_naming_the_option(option: str, message: str) -> None:
    with faas_shell() as shell:
        result = shell.run_cell(f"%%faas f x:int {option} --http\nx")
        assert isinstance(result.error_in_exec, UsageError) and message in str(result.error_in_exec)
        assert "f" not in shell.user_ns  # nothing defined, nothing deployed


def test_rich_annotations_are_checked_at_the_door_and_the_function_gets_the_annotated_types(serve: Serve) -> None:
    server = serve.server
    answer = server.post("shapes", json=GOOD_SHAPES, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [3, 1.5, 2.0, 1931, 3, "fast", None, "Point", "Order"]
    before = len(invocations_of(server, "shapes"))
    bad = {
        "counts": [1, "2"],
        "weights": {"a": "heavy"},
        "point": {"y": 1},
        "movie": {"title": "M", "year": "1931"},
        "order": {"quantity": 1},
        "mode": "medium",
        "maybe": "3",
    }
    for name, value in bad.items():
        refused = server.post("shapes", json={**GOOD_SHAPES, name: value}, headers=AUTH)
        assert refused.status_code == 422, (name, refused.text)
        error = error_of(refused)
        assert error["type"] == "ArgumentError" and error["parameter"] == name
        assert f"parameter {name!r}" in error["message"]
    assert len(invocations_of(server, "shapes")) == before  # none of them ran


def test_openapi_has_the_real_json_schemas_and_the_new_answers(serve: Serve) -> None:
    document = serve.server.get("faas/api/openapi.json", headers=AUTH).json()
    validate_spec(document)
    request = document["paths"]["/faas/functions/shapes"]["post"]["requestBody"]["content"]["application/json"]
    keywords = request["schema"]["oneOf"][0]["properties"]
    assert keywords["counts"] == {"type": "array", "items": {"type": "integer"}}
    assert keywords["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert keywords["mode"]["enum"] == ["fast", "slow"]
    assert keywords["point"]["required"] == ["x"] and keywords["order"]["required"] == ["item"]
    assert keywords["movie"]["required"] == ["title", "year"]
    assert {"anyOf": [{"type": "integer"}, {"type": "null"}]}.items() <= keywords["maybe"].items()
    responses = document["paths"]["/faas/functions/square"]["post"]["responses"]
    assert {"409", "422", "429"} <= set(responses)
    assert "/faas/api/keys" in document["paths"] and "/faas/api/keys/{id}" in document["paths"]
