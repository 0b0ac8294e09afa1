"""Security defaults of a real `jupyter faas serve`: auth, --public, CORS, no pickle from a request, loopback
binding, a private state dir, and the headers of every answer."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import pickle
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from jupyter_faas.gateway import server as _server
from tests.helpers import RELIABILITY_AUTH as AUTH
from tests.helpers import RELIABILITY_CELLS as CELLS
from tests.helpers import RELIABILITY_TOKEN as TOKEN
from tests.helpers import StateServed as Served
from tests.helpers import error_of, shared_prefix, stop_process_group, wait_for, write_notebook
from tests.helpers import start_reliability_serve as start_serve

# Every route, with a path that reaches its handler; none of them may answer without the token but health.
API_ROUTES = [
    ("GET", "faas/api/functions"),
    ("GET", "faas/api/functions/square"),
    ("DELETE", "faas/api/functions/square"),
    ("GET", "faas/api/functions/square/invocations"),
    ("GET", "faas/api/platform"),
    ("GET", "faas/api/invocations/some-id"),
    ("GET", "faas/api/dead-letters"),
    ("DELETE", "faas/api/dead-letters/some-id"),
    ("POST", "faas/api/dead-letters/some-id/replay"),
    ("GET", "faas/api/triggers"),
    ("GET", "faas/api/openapi.json"),
    ("GET", "faas/metrics"),
]
ENDPOINT = ("POST", "faas/functions/square")


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inbox")
    (folder / "early.txt").write_text("early")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, inbox: Path) -> Iterator[Served]:
    """Serve under umask 0, with a schedule and a file trigger beside the functions: every file it makes is seen."""
    folder = tmp_path_factory.mktemp("security")
    cells = [
        *CELLS,
        "%%faas tick --every 1s\n'tick'",
        f"%%faas shout_file path --on-file {inbox} --pattern '*.txt'\nopen(path).read().upper()",
    ]
    env = {"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s"}
    server = start_serve(write_notebook(folder / "security.ipynb", cells), folder / "state", env=env, umask=0)
    try:
        assert server.works()
        yield server
    finally:
        stop_process_group(server.process)


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """--public, listening on another loopback address than the cluster's (127.0.0.2)."""
    folder = tmp_path_factory.mktemp("public")
    notebook = write_notebook(folder / "public.ipynb", CELLS)
    server = start_serve(notebook, folder / "state", "--public", "--ip", "127.0.0.2")
    try:
        assert server.works()
        yield server
    finally:
        stop_process_group(server.process)


def send(served: Served, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{served.url}{path}", timeout=60, **kwargs)


# -- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [ENDPOINT, *API_ROUTES])
def test_every_route_but_health_needs_the_token(served: Served, method: str, path: str) -> None:
    missing = send(served, method, path, json={"x": 1})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(missing)["type"] == "Unauthorized"
    wrong = send(served, method, path, json={"x": 1}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert error_of(wrong)["type"] == "Forbidden"
    assert send(served, "GET", "faas/api/health").json() == {"status": "ok"}
    # Nothing a refused request asked for happened: square is still deployed, and was not invoked by it.
    assert send(served, "GET", "faas/api/functions/square", headers=AUTH).status_code == 200


def wrong_tokens() -> list[str]:
    """Wrong tokens of every length from 1 to the token's length + 8, and near misses of the token's own length."""
    tokens = [("x" * length) for length in range(1, len(TOKEN) + 9)]
    tokens += [TOKEN[:-1], TOKEN + "0", TOKEN[1:], TOKEN.upper(), TOKEN[:-1] + chr(ord(TOKEN[-1]) + 1)]
    tokens += [TOKEN[:i] + "#" + TOKEN[i + 1 :] for i in range(0, len(TOKEN), 7)]
    return tokens


def test_wrong_tokens_of_every_length_are_refused_and_compared_in_constant_time(served: Served) -> None:
    with httpx.Client(timeout=30) as client:
        for token in wrong_tokens():
            for scheme in ("Bearer", "token"):
                response = client.post(
                    f"{served.url}faas/functions/square", json={"x": 1}, headers={"Authorization": f"{scheme} {token}"}
                )
                assert response.status_code == 403, token
                response = client.get(f"{served.url}faas/api/functions", headers={"Authorization": f"{scheme} {token}"})
                assert response.status_code == 403, token
        for header in ("", "Bearer", "Basic " + TOKEN, TOKEN, f"Bearer{TOKEN}", f"Digest {TOKEN}"):
            response = client.get(f"{served.url}faas/api/functions", headers={"Authorization": header})
            assert response.status_code == 401, header
    # The comparison is hmac.compare_digest's, whose time does not depend on where the tokens differ.
    assert "hmac.compare_digest(" in inspect.getsource(_server._ServeBase.faas_guard)
    assert served.works()


def test_public_opens_only_the_function_endpoints_and_warns(public: Served) -> None:
    assert public.post("square", json={"x": 5}).json() == 25
    for method, path in API_ROUTES:
        assert send(public, method, path).status_code == 401, path
    warning = next(line for line in public.output if "WARNING: --public" in line)
    assert "The REST API still needs the token" in warning


# -- CORS ----------------------------------------------------------------------------------------------


def test_no_cors_headers_on_any_answer_and_preflights_are_refused(served: Served) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    for method, path in [ENDPOINT, *API_ROUTES, ("GET", "faas/api/health")]:
        if method == "DELETE":
            path = path.replace("square", "not_deployed")  # an answer, not the loss of square
        response = send(served, method, path, json={"x": 1}, headers={**AUTH, **origin})
        assert not [h for h in response.headers if h.lower().startswith("access-control-")], (path, response.headers)
        preflight = send(
            served,
            "OPTIONS",
            path,
            headers={
                **origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 405, path
        assert not [h for h in preflight.headers if h.lower().startswith("access-control-")], path


# -- pickle --------------------------------------------------------------------------------------------


class Evil:
    """Unpickling this creates the marker file: proof that a request's bytes were unpickled somewhere."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


CONTENT_TYPES = [
    "application/json",
    "application/octet-stream",
    "application/python-pickle",
    "application/x-python-serialize",
    "text/plain",
    "multipart/form-data",
    None,
]


def as_request(payload: bytes, content_type: str | None) -> dict[str, Any]:
    """The payload as a body of this Content-Type (a real multipart body for multipart), with the token."""
    if content_type is None:
        return {"content": payload, "headers": AUTH}
    if content_type == "multipart/form-data":
        boundary = "faas-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.pickle"\r\n'
                "Content-Type: application/python-pickle\r\n\r\n"
            ).encode()
            + payload
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return {"content": body, "headers": {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}}
    return {"content": payload, "headers": {**AUTH, "Content-Type": content_type}}


def settle(served: Served, invocation_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        state = send(served, "GET", f"faas/api/invocations/{invocation_id}", headers=AUTH).json()
        return None if state["status"] in ("queued", "running") else state

    return wait_for(done, 60, f"invocation {invocation_id}")


def test_a_malicious_pickle_is_never_loaded_whatever_its_content_type_or_route(served: Served, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled-here"
    payloads = [pickle.dumps(Evil(marker), protocol=protocol) for protocol in range(6)]
    assert pickle.loads(payloads[0]) is not None and marker.exists()  # the payloads work: loading one makes it
    marker.unlink()
    sizes: set[int] = set()
    queued: list[str] = []
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for payload in payloads:
            for content_type in CONTENT_TYPES:
                request = as_request(payload, content_type)
                for name in ("size", "square", "gather"):
                    response = client.post(f"faas/functions/{name}", **request)
                    assert response.status_code in (200, 400, 422), response.text
                    if name == "size" and response.status_code == 200:
                        sizes.add(response.json())
                for name in ("size", "reject"):
                    response = client.post(f"faas/functions/{name}?async=true", **request)
                    assert response.status_code in (202, 400), response.text
                    if response.status_code == 202:
                        queued.append(response.json()["id"])
                response = client.post("faas/api/dead-letters/no-such-letter/replay", **request)
                assert response.status_code == 404
        # No other API route takes a body: POST, PUT and PATCH are refused before one is read.
        for content_type in CONTENT_TYPES:
            request = as_request(payloads[-1], content_type)
            for method in ("POST", "PUT", "PATCH"):
                for _, path in API_ROUTES:
                    response = client.request(method, path, **request)
                    assert response.status_code in (404, 405), (method, path, response.status_code)
        # Each failed asynchronous invocation (reject's) is a dead letter that holds its pickle: replay each,
        # with a pickle as the replay's own body too.
        for invocation_id in queued:
            settle(served, invocation_id)
        letters = client.get("faas/api/dead-letters", headers=AUTH).json()["dead_letters"]
        rejected = [letter for letter in letters if letter["function"] == "reject"]
        # JSON, and no Content-Type (read as JSON), are 400 at the door: the other five are letters.
        assert len(rejected) >= len(payloads) * 5
        replayed = []
        for letter, content_type in zip(rejected, CONTENT_TYPES * len(rejected), strict=False):
            response = client.post(
                f"faas/api/dead-letters/{letter['id']}/replay", **as_request(payloads[-1], content_type)
            )
            assert response.status_code == 202
            replayed.append(response.json()["id"])
    for invocation_id in replayed:
        error = settle(served, invocation_id)["error"]
        assert error["type"] == "ValueError" and "rejected" in error["message"]
    # The pickles went in as bytes and stayed bytes: size counted them.
    assert {len(payload) for payload in payloads} <= sizes
    assert not marker.exists()
    assert served.works()


# -- binding -------------------------------------------------------------------------------------------


def listening(process: psutil.Process) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every LISTEN socket of the process and its descendants."""
    found = []
    for each in [process, *process.children(recursive=True)]:
        try:
            connections = each.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(c.laddr.ip, c.laddr.port, each.pid) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.parametrize("which", ["served", "public"])
def test_the_scheduler_workers_and_dashboard_listen_on_loopback_only(
    request: pytest.FixtureRequest, which: str
) -> None:
    server: Served = request.getfixturevalue(which)
    assert server.works()  # a worker is up, with its nanny and its invocation stream
    workers = send(server, "GET", "faas/api/platform", headers=AUTH).json()["workers"]
    assert workers >= 1
    sockets = listening(psutil.Process(server.process.pid))
    http = [s for s in sockets if s[1] == server.port]
    others = [s for s in sockets if s[1] != server.port]
    assert [s[0] for s in http] == [server.host]
    # The scheduler, its dashboard, and per worker a nanny, a worker and an invocation stream at least.
    assert len(others) >= 2 + 3 * workers, sockets
    assert {s[0] for s in others} == {"127.0.0.1"}, sockets


# -- the state dir -------------------------------------------------------------------------------------


def test_the_state_dir_is_0700_and_its_files_0600_under_umask_0(served: Served, inbox: Path) -> None:
    # Invocations (for the log), a dead letter, a schedule's ticks and a file trigger's progress.
    assert served.post("square", json={"x": 3}, headers=AUTH).json() == 9
    queued = send(served, "POST", "faas/functions/reject?async=true", **as_request(b"x", "text/plain")).json()["id"]
    settle(served, queued)
    (inbox / "late.txt").write_text("late")

    def triggers() -> dict[str, Any]:
        return {t["id"]: t for t in send(served, "GET", "faas/api/triggers", headers=AUTH).json()["triggers"]}

    wait_for(lambda: triggers()["shout_file.file"]["files_done"] == 2, 30, "both files handled")
    log = served.state / "invocations.sqlite"
    wait_for(log.exists, 30, "the log")
    # The log's writer closes its connection after each batch, and the last connection to close removes the
    # -wal and -shm files: with this one open, they stay, made with the database's own mode.
    with contextlib.closing(sqlite3.connect(f"{log.absolute().as_uri()}?mode=rw", uri=True)) as reader:
        reader.execute("SELECT count(*) FROM invocations").fetchone()
        assert served.works()
        wait_for(lambda: Path(f"{log}-wal").exists() and Path(f"{log}-shm").exists(), 30, "the log's -wal and -shm")
        folders, files = [served.state], []
        for path in served.state.rglob("*"):
            (folders if path.is_dir() else files).append(path)
        modes = {path: stat.S_IMODE(path.stat().st_mode) for path in folders + files}
    names = {path.name for path in files}
    assert {"invocations.sqlite", "invocations.sqlite-wal", "invocations.sqlite-shm"} <= names
    assert {"dead-letters.jsonl", "dead-letters.jsonl.lock", "shout_file.file.files"} <= names
    assert {"tick.schedule.json", "shout_file.file.json"} <= names
    loose = {str(path): oct(mode) for path, mode in modes.items() if mode != (0o700 if path in folders else 0o600)}
    assert not loose


# -- headers -------------------------------------------------------------------------------------------


def check_headers(response: httpx.Response) -> str:
    assert response.headers.get("X-Content-Type-Options") == "nosniff", response.headers
    assert "server" not in response.headers, response.headers
    request_id = response.headers["X-Request-Id"]
    assert request_id
    return request_id


def test_every_answer_has_nosniff_a_request_id_and_no_server_banner(served: Served) -> None:
    big = {**AUTH, "Content-Type": "application/octet-stream"}
    answers = [
        served.post("square", json={"x": 2}, headers=AUTH),  # 200
        served.post("square", content=b"{", headers={**AUTH, "Content-Type": "application/json"}),  # 400
        served.post("square", json={"x": 2}),  # 401
        served.post("square", json={"x": 2}, headers={"Authorization": "Bearer wrong"}),  # 403
        served.post("nothing_here", json={}, headers=AUTH),  # 404
        send(served, "GET", "faas/functions/square", headers=AUTH),  # 405
        served.post("size", content=b"x" * (6 * 2**20 + 1), headers=big),  # 413
        served.post("square", json={"x": "two"}, headers=AUTH),  # 422
        served.post("square", json={"x": 2}, headers={**AUTH, "X-Padding": "p" * 40_000}),  # 431
        served.post("boom", headers=AUTH),  # 500, the function's own
        send(served, "GET", "faas/metrics", headers=AUTH),
        send(served, "GET", "faas/api/health"),
        send(served, "GET", "faas/api/openapi.json", headers=AUTH),
        send(served, "GET", "faas/no/such/path", headers=AUTH),  # 404 outside the routes
        send(served, "GET", "favicon.ico"),  # and outside faas/
        send(served, "OPTIONS", "faas/api/functions"),  # 405
        *(send(served, method, path, headers=AUTH) for method, path in API_ROUTES if method == "GET"),
    ]
    assert {r.status_code for r in answers} >= {200, 400, 401, 403, 404, 405, 413, 422, 431, 500}
    ids = [check_headers(response) for response in answers]
    assert len(set(ids)) == len(ids)
    for response in answers:
        if response.status_code >= 400:
            error_of(response)


def records_of(served: Served, name: str) -> dict[str, dict[str, Any]]:
    listed = send(served, "GET", f"faas/api/functions/{name}/invocations", params={"limit": 1000}, headers=AUTH)
    return {record["id"]: record for record in listed.json()["invocations"]}


def test_the_request_id_of_an_invocation_is_its_record_id(served: Served) -> None:
    ok = served.post("square", json={"x": 6}, headers=AUTH)
    assert ok.json() == 36
    record = records_of(served, "square")[check_headers(ok)]
    assert record["status"] == "ok" and record["trigger"] == "http"

    failed = served.post("boom", headers=AUTH)
    assert failed.status_code == 500
    assert records_of(served, "boom")[check_headers(failed)]["error"] == "ValueError"

    queued = send(served, "POST", "faas/functions/square?async=true", json={"x": 7}, headers=AUTH)
    invocation_id = check_headers(queued)
    assert queued.json()["id"] == invocation_id
    assert settle(served, invocation_id)["result"] == 49
    assert invocation_id in records_of(served, "square")

    letter = send(served, "POST", "faas/functions/reject?async=true", **as_request(b"abc", "text/plain")).json()["id"]
    settle(served, letter)
    replayed = send(served, "POST", f"faas/api/dead-letters/{letter}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert check_headers(replayed) == replayed.json()["id"] != letter
    settle(served, replayed.json()["id"])
    assert replayed.json()["id"] in records_of(served, "reject")

    # Requests that invoke nothing get fresh random ids, not invocation ids.
    other = {check_headers(send(served, "GET", "faas/api/functions", headers=AUTH)) for _ in range(5)}
    assert len(other) == 5
    assert not other & set(records_of(served, "square"))


# -- invocation ids ------------------------------------------------------------------------------------


def test_anonymous_callers_cannot_count_invocations_from_their_request_ids(public: Served) -> None:
    """Under --public anyone sees X-Request-Id: it must not be a counter, nor share a prefix a caller could read."""
    ids = []
    for x in range(12):
        response = public.post("square", json={"x": x})
        assert response.status_code == 200
        ids.append(check_headers(response))
    assert len(set(ids)) == len(ids)
    for earlier, later in itertools.pairwise(ids):
        shared = shared_prefix(earlier, later)
        # 64 random bits in hex: two ids share more than 4 leading characters about once in 65,000 pairs.
        assert shared <= 4, (earlier, later)
        assert not later.rstrip("0123456789").endswith("-"), later
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids), ids
