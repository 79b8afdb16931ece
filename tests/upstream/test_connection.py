"""The gateway's pooled connection: one write per small request, cheap liveness, fast heads."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from flask_inference_gateway.upstream import connection
from flask_inference_gateway.upstream.connection import (
    ONE_WRITE_LIMIT,
    GatewayHTTPConnection,
    GatewayHTTPPool,
    GatewayHTTPSPool,
)
from flask_inference_gateway.upstream.http import make_session


def test_the_response_reads_its_head_with_our_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = connection.parse_headers

    def counting(fp: object, _class: type = http.client.HTTPMessage) -> object:
        calls.append(fp)
        return real(fp, _class)
    monkeypatch.setitem(connection.FastHeadResponse.begin.__globals__, "parse_headers", counting)
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")
        response = connection.FastHeadResponse(left)
        response.begin()
        assert (response.status, response.headers["x-a"], response.read()) == (200, "1", b"ok")
    assert len(calls) == 1


class RecordingSocket:
    """A connected socket that keeps what each ``sendall`` sent."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def settimeout(self, timeout: float | None) -> None:
        pass


def sent(body: bytes | None, method: str = "POST") -> list[bytes]:
    conn = GatewayHTTPConnection("127.0.0.1", 9)
    conn.sock = RecordingSocket()  # type: ignore[assignment]
    conn.request(method, "/api/chat", body=body, headers={"Content-Type": "application/json"})
    return conn.sock.writes  # type: ignore[attr-defined]


def test_a_small_body_goes_out_with_the_head_in_one_write() -> None:
    writes = sent(b'{"model":"m"}')
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/chat HTTP/1.1\r\n") and b"Content-Length: 13" in head
    assert body == b'{"model":"m"}'


def test_a_large_body_is_not_copied_behind_the_head() -> None:
    body = b"x" * (ONE_WRITE_LIMIT + 1)
    writes = sent(body)
    assert len(writes) == 2 and writes[0].endswith(b"\r\n\r\n") and writes[1] == body


def test_a_request_without_a_body_sends_its_head() -> None:
    writes = sent(None, "GET")
    assert len(writes) == 1 and writes[0].startswith(b"GET /api/chat HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n")


def test_the_session_pools_make_the_gateways_connections() -> None:
    adapter = make_session(4).get_adapter("http://x")
    manager = adapter.poolmanager  # type: ignore[attr-defined]
    assert type(manager.connection_from_url("http://127.0.0.1:1")) is GatewayHTTPPool
    assert type(manager.connection_from_url("https://127.0.0.1:1")) is GatewayHTTPSPool


def serve_once(answer: bytes) -> tuple[int, list[bytes]]:
    """Answer one request on a loopback port with ``answer``; return the port and what came."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def run() -> None:
        with listener, listener.accept()[0] as peer:
            data = b""
            while b"\r\n\r\n" not in data:
                data += peer.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += peer.recv(65536)
            received.append(body)
            peer.sendall(answer)

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], received


def test_a_backend_call_through_the_session_reads_a_folded_head() -> None:
    port, received = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                b"X-Long: first\r\n second\r\n\r\nok")
    response = make_session(2).post(f"http://127.0.0.1:{port}/api/chat", data=b'{"a":1}',
                                    timeout=5)
    assert response.status_code == 200 and response.content == b"ok"
    assert response.headers["x-long"] == "first second"  # urllib3 unfolds it
    assert received == [b'{"a":1}']
