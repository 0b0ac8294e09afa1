"""A generator's answer over HTTP through `jupyter faas serve`: chunked NDJSON, SSE, raw bytes, and errors."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import (
    AUTH,
    Served,
    error_of,
    invocations_of,
    start_serve,
    stop_process_group,
    wait_for,
    write_notebook,
)

COUNTING = (
    "%%faas --http --timeout 60s\n"
    "def {name}(progress: str):\n"
    "    import itertools, os, time\n"
    "    for i in itertools.count():\n"
    "        with open(progress + '.part', 'w') as f:\n"
    "            f.write(str(i))\n"
    "        os.replace(progress + '.part', progress)\n"
    "        time.sleep(0.002)\n"
    "{each_step}{after}"
)

CELLS = [
    "%%faas --http\n"
    "def until_released(gate: str):\n"
    "    import os, time\n"
    "    yield {'n': 1}\n"
    "    deadline = time.monotonic() + 20\n"
    "    while not os.path.exists(gate) and time.monotonic() < deadline:\n"
    "        time.sleep(0.01)\n"
    "    yield {'n': 2, 'released': os.path.exists(gate)}\n",
    "%%faas --http\ndef fails_after_one():\n    yield 1\n    raise ValueError('broke after one')\n",
    "%%faas --http\ndef fails_at_once():\n    raise ValueError('before any item')\n    yield 1\n",
    "%%faas --http\ndef letters(n: int):\n    for i in range(n):\n        yield bytes([65 + i]) * 3\n",
    "%%faas --http\n"
    "class Greeter:\n"
    "    def setup(self):\n"
    "        self.greeting = 'hello'\n\n"
    "    def __call__(self, name: str) -> str:\n"
    "        return f'{self.greeting} {name}'\n",
    # Endless, writing how far it got: one yields each step, the other never reaches its first item.
    COUNTING.format(name="forever", each_step="        yield i\n", after=""),
    COUNTING.format(name="slow_start", each_step="", after="    yield 'never'\n"),
    "%%faas --http\nasync def awaited(x: int) -> int:\n"
    "    import asyncio\n    await asyncio.sleep(0.01)\n    return x + 1\n",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("streaming")
    served = start_serve(write_notebook(folder / "streams.ipynb", CELLS), folder / "state")
    try:
        yield served
    finally:
        stop_process_group(served.process)


def test_ndjson_items_arrive_in_chunks_before_the_generator_ends(server: Served, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    url = f"{server.url}faas/functions/until_released"
    with httpx.stream("POST", url, json={"gate": str(gate)}, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = response.iter_raw()
        received = b""
        while b"\n" not in received:
            received += next(chunks)
        # The first line came while the function still waits for the gate, which only this test opens.
        assert json.loads(received.split(b"\n")[0]) == {"n": 1}
        gate.touch()
        received += b"".join(chunks)
    lines = [json.loads(line) for line in received.decode().splitlines()]
    assert lines == [{"n": 1}, {"n": 2, "released": True}]
    record = invocations_of(server, "until_released")[0]
    assert record["items"] == 2 and record["trigger"] == "http" and record["first_item_ms"] is not None


def test_server_sent_events_when_the_caller_accepts_them(server: Served) -> None:
    headers = {**AUTH, "Accept": "text/event-stream"}
    response = server.post("fails_after_one", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = response.text.split("\n\n")
    assert events[0] == "data: 1"
    assert events[1].startswith("event: error\ndata: ")
    error = json.loads(events[1].split("data: ", 1)[1])["error"]
    assert error["type"] == "ValueError" and "broke after one" in error["message"]


def test_an_error_after_the_first_item_ends_ndjson_with_an_error_line(server: Served) -> None:
    response = server.post("fails_after_one", headers=AUTH)
    assert response.status_code == 200
    first, last = response.text.splitlines()
    assert json.loads(first) == 1
    assert json.loads(last)["error"]["type"] == "ValueError"


def test_an_error_before_any_item_is_an_ordinary_error_answer(server: Served) -> None:
    response = server.post("fails_at_once", headers=AUTH)
    assert response.status_code == 500
    assert "before any item" in error_of(response)["message"]


def test_bytes_items_go_as_raw_chunks(server: Served) -> None:
    response = server.post("letters", json={"n": 3}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"AAABBBCCC"


def test_a_streamed_answer_and_an_empty_answer_each_carry_their_own_request_id(server: Served) -> None:
    """The id is set when the headers go out: a stream's first chunk and a 204 without a body must have it too."""
    streamed = server.post("letters", json={"n": 2}, headers=AUTH)
    assert streamed.status_code == 200 and streamed.content == b"AAABBB"
    assert streamed.headers["X-Request-Id"] in {record["id"] for record in invocations_of(server, "letters")}

    created = httpx.post(f"{server.url}faas/api/keys", json={"functions": ["letters"]}, headers=AUTH, timeout=60)
    assert created.status_code == 201
    key_url = f"{server.url}faas/api/keys/{created.json()['id']}"
    deleted = httpx.delete(key_url, headers=AUTH, timeout=60)
    gone = httpx.delete(key_url, headers=AUTH, timeout=60)
    assert (deleted.status_code, deleted.content, gone.status_code) == (204, b"", 404)
    ids = [response.headers["X-Request-Id"] for response in (streamed, created, deleted, gone)]
    assert all(len(ident) >= 16 for ident in ids) and len(set(ids)) == len(ids)


def test_a_warm_class_and_an_async_function_answer_over_http(server: Served) -> None:
    assert server.post("Greeter", json={"name": "ann"}, headers=AUTH).json() == "hello ann"
    assert server.post("Greeter", json={"name": "bob"}, headers=AUTH).json() == "hello bob"
    records = invocations_of(server, "Greeter")
    assert [record["init_ms"] is not None for record in records].count(True) >= 1
    assert server.post("awaited", json={"x": 41}, headers=AUTH).json() == 42


def test_a_caller_that_disconnects_mid_stream_stops_the_function(server: Served, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    url = f"{server.url}faas/functions/forever"
    with httpx.stream("POST", url, json={"progress": str(progress)}, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert [json.loads(next(lines)) for _ in range(3)] == [0, 1, 2]
    # The connection is closed: the server finds out at its next write, and stops the function there.
    record = wait_for(lambda: invocations_of(server, "forever"), 20, "the stopped call's record")[0]
    assert record["status"] == "error" and record["error"] == "StreamClosed" and record["attempts"] == 1, record
    assert record["duration_ms"] < 20_000  # its timeout is 60 s
    reached = progress.read_text()
    time.sleep(0.5)  # an observation window: 100 of its items' time
    assert progress.read_text() == reached


def test_a_caller_that_disconnects_before_the_first_item_stops_the_function(server: Served, tmp_path: Path) -> None:
    # Nothing has been written when it leaves, so no failed write can tell: the closed connection must.
    progress = tmp_path / "progress"
    body = json.dumps({"progress": str(progress)}).encode()
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
        raw.sendall(
            b"POST /faas/functions/slow_start HTTP/1.1\r\n"
            + f"Host: {parts.netloc}\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(progress.exists, 20, "the function to start")
    record = wait_for(lambda: invocations_of(server, "slow_start"), 20, "the stopped call's record")[0]
    assert record["status"] == "error" and record["error"] == "StreamClosed" and record["items"] == 0, record
    reached = progress.read_text()
    time.sleep(0.5)  # an observation window: 100 of its steps' time
    assert progress.read_text() == reached


def test_openapi_describes_streamed_answers(server: Served) -> None:
    spec = server.get("faas/api/openapi.json", headers=AUTH).json()
    streamed = next(v for k, v in spec["paths"].items() if k.endswith("/until_released"))["post"]["responses"]["200"]
    assert {"application/x-ndjson", "text/event-stream"} <= set(streamed["content"])
    plain = next(v for k, v in spec["paths"].items() if k.endswith("/awaited"))["post"]["responses"]["200"]
    assert "application/x-ndjson" not in plain["content"]
