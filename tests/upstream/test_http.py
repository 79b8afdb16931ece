"""The one mapping from upstream failures to gateway errors is complete."""

from __future__ import annotations

import inspect
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from flask_inference_gateway.core.errors import (
    BackendBusy,
    BackendError,
    BackendFailedRequest,
    BackendRejected,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from flask_inference_gateway.upstream.http import (
    close_idle,
    error_for_status,
    make_session,
    map_exception,
    prepare,
    send,
    upstream_message,
)
from tests.fake_ollama import FakeOllama

REQUESTS_EXCEPTIONS = sorted(
    (cls for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
     if issubclass(cls, requests.RequestException)),
    key=lambda cls: cls.__name__)


@pytest.mark.parametrize("exc_class", REQUESTS_EXCEPTIONS,
                         ids=[cls.__name__ for cls in REQUESTS_EXCEPTIONS])
def test_every_requests_exception_maps_to_a_backend_error(exc_class: type) -> None:
    # JSONDecodeError also takes the (msg, doc, pos) arguments of json's.
    args = ("boom", "{", 0) if issubclass(exc_class, ValueError) else ("boom",)
    error = map_exception(exc_class(*args))
    assert isinstance(error, BackendError)
    assert error.status in (502, 503, 504)


@pytest.mark.parametrize(("exc", "expected"), [
    (requests.ConnectionError("refused"), BackendUnavailable),
    (requests.ConnectTimeout("slow"), BackendTimeout),
    (requests.ReadTimeout("silent"), BackendTimeout),
    (requests.ConnectionError(ReadTimeoutError(None, "/", "silent mid-stream")), BackendTimeout),
    (requests.exceptions.ChunkedEncodingError("cut"), BackendStreamBroken),
    (requests.ConnectionError(ProtocolError("aborted before the answer")), BackendUnavailable),
    (requests.exceptions.InvalidURL("bad"), BackendError),
], ids=["refused", "connect-timeout", "read-timeout", "read-timeout-mid-stream",
        "chunked-cut", "aborted", "other"])
def test_exception_mapping(exc: requests.RequestException, expected: type) -> None:
    assert type(map_exception(exc)) is expected


@pytest.mark.parametrize("status", range(400, 600), ids=str)
def test_every_upstream_error_status_is_mapped(status: int) -> None:
    error = error_for_status(status, b'{"error": "nope"}')
    assert isinstance(error, (BackendError, ModelNotFound))
    assert error.status != 500
    assert error.type != "internal_error"


@pytest.mark.parametrize(("status", "expected", "gateway_status"), [
    (400, BackendRejected, 400),
    (422, BackendRejected, 400),
    (404, ModelNotFound, 404),
    (429, BackendBusy, 503),
    (503, BackendBusy, 503),
    (504, BackendTimeout, 504),
    (500, BackendFailedRequest, 502),
    (502, BackendError, 502),
    (401, BackendError, 502),
], ids=["400", "422", "404", "429", "503", "504", "500", "502", "401"])
def test_status_mapping(status: int, expected: type, gateway_status: int) -> None:
    error = error_for_status(status, b'{"error": "upstream says no"}')
    assert type(error) is expected
    assert error.status == gateway_status


def test_a_500_without_a_reason_is_the_backends_failure() -> None:
    for body in (b"", b"<html>oops</html>", b'{"error": ""}'):
        error = error_for_status(500, body)
        assert type(error) is BackendError and error.type == "backend_error"
    error = error_for_status(500, b'{"error": "invalid JSON schema in format"}')
    assert error.type == "backend_failed" and error.message == (
        "The model backend answered 500: invalid JSON schema in format")


def test_rejection_carries_the_backend_message() -> None:
    error = error_for_status(400, b'{"error": "invalid options: num_ctx"}')
    assert error.message == "invalid options: num_ctx"


@pytest.mark.parametrize(("retry_after", "expected"), [("7", "7"), (None, "1")],
                         ids=["upstream", "default"])
def test_busy_sets_retry_after(retry_after: str | None, expected: str) -> None:
    error = error_for_status(503, b'{"error": "busy"}', retry_after)
    assert error.headers["Retry-After"] == expected


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": "model \\"x\\" not found"}', 'model "x" not found'),
    (b'{"error": {"message": "openai style", "type": "x"}}', "openai style"),
    (b"<html>bad gateway</html>", None),
    (b"model not loaded\n", "model not loaded"),
    (b"", None),
    (b"[1, 2]", None),
], ids=["ollama", "openai", "html", "plain-text", "empty", "not-an-object"])
def test_upstream_message(body: bytes, message: str | None) -> None:
    assert upstream_message(body) == message


class ClosingServer:
    """Answer each connection's first request, keep it alive, then close it unanswered
    when its next request arrives: a keep-alive connection the server dropped."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.answer_once, args=(conn,), daemon=True).start()

    def answer_once(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive"
                         b"\r\n\r\nok")
            conn.recv(65536)  # the next request on this connection: dropped unanswered


def test_a_pooled_connection_the_server_closed_is_replaced() -> None:
    server = ClosingServer()
    session = make_session(4)
    try:
        for _ in range(3):
            request = prepare("POST", server.url, b"{}", {})
            assert send(session, request, stream=False, timeout=(2, 2)).text == "ok"
        assert server.connections == 3  # each reuse failed and went out again on a new one
    finally:
        session.close()
        server.listener.close()


def test_a_refused_connection_is_not_sent_again() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    session = make_session(4)
    with pytest.raises(BackendUnavailable):
        send(session, prepare("POST", f"http://127.0.0.1:{port}/", b"{}", {}),
             stream=False, timeout=(2, 2))
    session.close()


def open_to(fake: FakeOllama) -> int:
    """Return how many connections to ``fake`` are open on its side."""
    time.sleep(0.1)  # the server thread notices a closed connection
    with fake._lock:
        return len(fake._conns)


def test_idle_pooled_connections_are_closed_and_reopened_on_demand(
        fake_ollama: FakeOllama) -> None:
    session = make_session(8)
    tags = fake_ollama.url + "/api/tags"
    try:
        with ThreadPoolExecutor(4) as pool:  # four at once: four pooled connections
            list(pool.map(lambda _: send(session, prepare("GET", tags), stream=False,
                                         timeout=(2, 2)).content, range(4)))
        opened = open_to(fake_ollama)
        assert opened >= 2
        assert close_idle(session, older_than=60) == 0  # none idle that long
        assert open_to(fake_ollama) == opened
        time.sleep(0.05)
        assert close_idle(session, older_than=0.01) == opened
        assert open_to(fake_ollama) == 0  # the backend holds no socket for the gateway
        answer = send(session, prepare("GET", tags), stream=False, timeout=(2, 2))
        assert answer.status_code == 200  # a closed connection reconnects when next taken
    finally:
        session.close()
