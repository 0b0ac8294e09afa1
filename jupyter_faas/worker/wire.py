"""Length-prefixed frames over a socket, for the direct client-to-worker invocation stream."""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!Q")
# Larger frames are refused rather than allocated: a corrupt header must not exhaust memory.
MAX_FRAME = 2**34


class ConnectionLost(ConnectionError):
    """The peer closed the stream, or it broke."""


class SendFailed(ConnectionLost):
    """Sending a frame failed after `sent` of its bytes had left (0: none did)."""

    def __init__(self, sent: int, error: OSError) -> None:
        super().__init__(f"sending failed after {sent} bytes: {error}")
        self.sent = sent


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise ConnectionLost("the connection was closed")
        received += count
    return bytes(buffer)


def send(sock: socket.socket, message: Any) -> None:
    payload = pickle.dumps(message, protocol=5)
    frame = memoryview(_HEADER.pack(len(payload)) + payload)
    sent = 0
    # sendall() cannot say how much left before a failure; the caller needs to know whether any did.
    try:
        while sent < len(frame):
            sent += sock.send(frame[sent:])
    except OSError as error:
        raise SendFailed(sent, error) from error


def receive(sock: socket.socket) -> Any:
    """The next message; only for streams whose peer has proven the shared token."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionLost(f"refusing a frame of {size} bytes")
    return pickle.loads(_receive_exactly(sock, size))


def send_token(sock: socket.socket, token: bytes) -> None:
    sock.sendall(_HEADER.pack(len(token)) + token)


def receive_token(sock: socket.socket, expected_length: int) -> bytes:
    """A raw token, read before anything is unpickled; a header of the wrong length ends the stream."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size))
    if size != expected_length:
        raise ConnectionLost("bad handshake")
    return _receive_exactly(sock, size)
