"""Hand-written bad HTTP input against a real `jupyter faas serve`: each gets its documented answer, and the
platform answers a good request right after it."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import RELIABILITY_AUTH as AUTH
from tests.helpers import RELIABILITY_CELLS as CELLS
from tests.helpers import RELIABILITY_TOKEN as TOKEN
from tests.helpers import StateServed as Served
from tests.helpers import error_of, serving, wait_for

JSON = {**AUTH, "Content-Type": "application/json"}
READ_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("bad-input")
    env = {"DASK_FAAS__CLUSTER__IDLE_TIMEOUT": "300s", "DASK_FAAS__HTTP__READ_TIMEOUT": f"{READ_TIMEOUT}s"}
    with serving(folder, CELLS, env) as server:
        yield server


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


# (case, function, headers, body, status, error type or None for success, text the message must contain)
CASES: list[tuple[str, str, dict[str, str], bytes, int, str | None, str]] = [
    ("100,000 [ unclosed", "gather", JSON, b"[" * 100_000, 400, "InvalidJSON", "not valid JSON"),
    ("100,000 [ closed", "gather", JSON, nested(100_000), 400, "InvalidJSON", "recursion"),
    ("100,000 [ in an object", "options", JSON, b'{"a": ' + nested(100_000) + b"}", 400, "InvalidJSON", "JSON"),
    ("600 levels, valid JSON", "gather", JSON, nested(600), 422, "ArgumentError", "cannot be sent to a worker"),
    ("20 levels, valid JSON", "gather", JSON, nested(20), 200, None, ""),
    ("invalid UTF-8 in JSON", "echo", JSON, b'{"text": "\xff\xfe"}', 400, "InvalidJSON", "utf-8"),
    ("a lone surrogate escape", "echo", JSON, b'{"text": "\\ud800"}', 200, None, ""),
    ("1e400", "add", JSON, b'{"a": 1e400}', 400, "InvalidJSON", "too large for a float"),
    ("-1e400", "add", JSON, b"[-1e400]", 400, "InvalidJSON", "too large for a float"),
    ("NaN", "add", JSON, b'{"a": NaN}', 400, "InvalidJSON", "NaN is not a JSON number"),
    ("Infinity", "add", JSON, b"[Infinity]", 400, "InvalidJSON", "Infinity is not a JSON number"),
    ("10**5000", "square", JSON, b'{"x": 1' + b"0" * 5000 + b"}", 400, "InvalidJSON", "5001 digits is too long"),
    ("a 5000-digit float", "add", JSON, b'{"a": 1' + b"0" * 5000 + b".5}", 400, "InvalidJSON", "too large"),
    ("10**4000 squared", "square", JSON, b'{"x": 1' + b"0" * 4000 + b"}", 500, "ResultNotJSON", "JSON cannot"),
    ("1e308 + 1e308", "add", JSON, b"[1e308, 1e308]", 500, "ResultNotJSON", "JSON cannot carry"),
    ("a JSON string, not arguments", "square", JSON, b'"7"', 422, "ArgumentError", "not a JSON str"),
    ("no Content-Type is JSON", "square", AUTH, b'{"x": 3}', 200, None, ""),
    ("a +json Content-Type is JSON", "square", {**AUTH, "Content-Type": "application/vnd.x+json"}, b"[3]", 200,
     None, ""),
    ("JSON sent as a form", "square", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
     b'{"x": 3}', 422, "ArgumentError", "send Content-Type: application/json"),
    ("JSON sent as XML", "square", {**AUTH, "Content-Type": "application/xml"}, b'{"x": 3}', 422, "ArgumentError",
     "'x' expects int, got bytes"),
    ("JSON sent as multipart", "square", {**AUTH, "Content-Type": "multipart/form-data; boundary=x"}, b'{"x": 3}',
     422, "ArgumentError", "multipart/form-data"),
    ("a garbage Content-Type", "square", {**AUTH, "Content-Type": "garbage;;=;"}, b'{"x": 3}', 422, "ArgumentError",
     "as bytes"),
    ("invalid UTF-8 as bytes", "size", {**AUTH, "Content-Type": "application/octet-stream"}, b"\xff\xfe\xfd", 200,
     None, ""),
    ("not JSON at all", "square", JSON, b"\x80\x04\x95garbage", 400, "InvalidJSON", "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("function", "headers", "body", "status", "kind", "text"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_bad_body_gets_its_documented_answer_and_the_platform_still_works(
    served: Served, function: str, headers: dict[str, str], body: bytes, status: int, kind: str | None, text: str
) -> None:
    response = served.post(function, content=body, headers=headers)
    assert response.status_code == status, response.text[:500]
    if kind is None:
        response.json()
    else:
        error = error_of(response)
        assert error["type"] == kind
        assert text in error["message"], error
    assert served.works()


def raw_exchange(served: Served, request: bytes, timeout: float = 30) -> bytes:
    """Send bytes on a fresh connection; everything the server sends back until it closes or a response is whole."""
    with socket.create_connection((served.host, served.port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may close while a huge request is still going out
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            if length and len(rest) >= int(length.group(1)):
                return received


AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"POST /faas/functions/%FF", "Invalid unicode in name"),
        (b"POST /faas/functions/square?async=%FF", "Invalid unicode in async"),
        (b"GET /faas/api/functions/square/invocations?limit=%FF", "Invalid unicode in limit"),
    ],
)
def test_invalid_utf8_in_the_url_is_a_json_400(served: Served, target: bytes, message: str) -> None:
    host = f"Host: {served.host}:{served.port}\r\n".encode()
    answer = raw_exchange(served, target + b" HTTP/1.1\r\n" + host + AUTH_LINE + b"Content-Length: 2\r\n\r\n{}")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"application/json" in head
    assert message.encode() in body
    assert served.works()


def test_headers_over_the_limit_get_431_and_far_over_it_the_connection_is_closed(served: Served) -> None:
    # 40 KB of headers: over the handler's 32 KiB, within what the HTTP server reads: a JSON 431.
    response = served.post("square", json={"x": 2}, headers={**AUTH, "X-Padding": "a" * 40_000})
    assert response.status_code == 431
    assert error_of(response)["type"] == "HeadersTooLarge"
    many = {f"X-Header-{i}": "b" * 30 for i in range(1500)}
    response = served.post("square", json={"x": 2}, headers={**AUTH, **many})
    assert response.status_code == 431
    # 300 KB: past what the HTTP server reads at all (256 KiB): it closes the connection without an answer.
    request = b"POST /faas/functions/square HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE + b"X-Padding: " + b"a" * 300_000
    answer = raw_exchange(served, request + b"\r\nContent-Length: 8\r\n\r\n" + b'{"x": 2}')
    assert answer == b""
    assert served.works()


def test_malformed_http_gets_a_bare_400_from_the_http_server(served: Served) -> None:
    for request in (
        b"GARBAGE\r\n\r\n",
        b"POST /faas/functions/square HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /faas/functions/square HTTP/1.1\r\nContent-Type: \x01bad\r\nContent-Length: 2\r\n\r\n{}",
    ):
        assert raw_exchange(served, request).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert served.works()


class Dribbler(threading.Thread):
    """A slowloris client: sends `head`, then one byte of the rest every `pause` seconds, until the server closes."""

    def __init__(self, served: Served, head: bytes, rest: bytes, pause: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((served.host, served.port), timeout=30)
        self.head, self.rest, self.pause = head, rest, pause
        self.sent = 0
        self.closed_after: float | None = None
        self.answer = b""
        self.stop = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        try:
            self.sock.sendall(self.head)
            self.sock.settimeout(self.pause)
            for byte in self.rest:
                if self.stop.is_set():
                    return
                self.sock.sendall(bytes([byte]))
                self.sent += 1
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                self.answer += data
                if not data:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.closed_after = time.monotonic() - began

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        self.sock.close()


@pytest.fixture
def dribblers() -> Iterator[list[Dribbler]]:
    started: list[Dribbler] = []
    try:
        yield started
    finally:
        for dribbler in started:
            dribbler.close()


def test_slow_bodies_and_headers_do_not_block_others_and_are_cut_off(served: Served, dribblers: list[Dribbler]) -> None:
    body = b'{"data": "' + b"x" * 5000 + b'"}'
    host = f"Host: {served.host}:{served.port}\r\n".encode()
    slow_body = b"POST /faas/functions/echo HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n" + AUTH_LINE
    slow_body += f"Content-Length: {len(body)}\r\n\r\n".encode()
    for _ in range(20):
        dribblers.append(Dribbler(served, slow_body, body))
    for _ in range(20):
        dribblers.append(Dribbler(served, b"POST /faas/functions/echo HTTP/1.1\r\n", b"X-Slow: " + b"y" * 5000))
    for dribbler in dribblers:
        dribbler.start()
    wait_for(lambda: all(d.sent >= 3 for d in dribblers), 10, "every slow client to be dribbling")
    # While 40 clients dribble, good requests are answered at once.
    for x in range(10):
        began = time.monotonic()
        response = served.post("square", json={"x": x}, headers=AUTH)
        assert response.status_code == 200 and response.json() == x * x
        assert time.monotonic() - began < 2.0
    # Each slow client is cut off at faas.http.read-timeout (2 s here), with no answer, having sent a fraction.
    wait_for(lambda: all(d.closed_after is not None for d in dribblers), 30, "the slow clients to be cut off")
    for dribbler in dribblers:
        assert dribbler.answer == b""
        assert READ_TIMEOUT * 0.9 <= dribbler.closed_after < READ_TIMEOUT + 5  # type: ignore[operator]
        assert dribbler.sent < 1000
    assert served.works()


def test_bodies_over_the_limit_get_413_declared_or_chunked(served: Served) -> None:
    big = b"x" * (6 * 2**20 + 1)
    response = served.post("size", content=big, headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert response.status_code == 413
    assert error_of(response)["type"] == "PayloadTooLarge"

    def chunks() -> Iterator[bytes]:
        for _ in range(7):
            yield b"y" * 2**20

    response = served.post("size", content=chunks(), headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert response.status_code == 413
    assert served.works()
