"""The probe of a client's connection, next to the worker class."""

from __future__ import annotations

import socket

from flask_inference_gateway.core.types import never_gone
from flask_inference_gateway.worker import client_probe


def test_client_watch_sees_a_closed_client_without_reading_its_data() -> None:
    ours, client = socket.socketpair()
    gone = client_probe({"gunicorn.sock": ours})
    assert gone() is False  # open, nothing sent
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert gone() is False and ours.recv(100) == b"GET / HTTP/1.1\r\n"  # peeked, not eaten
    client.close()
    assert gone() is True
    ours.close()
    assert gone() is True  # a socket already closed on our side counts as gone


def test_without_a_server_socket_the_client_is_always_there() -> None:
    assert client_probe({}) is never_gone
