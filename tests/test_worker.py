"""The probe of a client's connection, next to the worker class."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable, Iterable, Iterator
from unittest.mock import patch

import gevent.socket
import pytest
from gevent import pywsgi
from gevent.pywsgi import WSGIServer
from gunicorn.workers import ggevent

from flask_inference_gateway.core.types import never_gone
from flask_inference_gateway.worker import (
    GC_FIRST_THRESHOLD,
    ONE_WRITE_LIMIT,
    GatewayWorker,
    IdleTimeoutHandler,
    client_probe,
)


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


class RecordingHandler(IdleTimeoutHandler):
    """The gateway's handler, keeping each write it makes to the client's socket."""

    writes: list[bytes] = []

    def _sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        super()._sendall(data)


GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def served(app: Callable[..., Iterable[bytes]], request: bytes = GET) -> tuple[bytes, list[bytes]]:
    """Send one request through gevent's server with the gateway's handler."""
    RecordingHandler.writes = []
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=RecordingHandler, log=None)
    server.start()
    try:
        with gevent.socket.create_connection(server.address) as client:
            client.sendall(request)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
    finally:
        server.stop()
    return answer, RecordingHandler.writes


def test_the_head_and_a_whole_answer_go_out_in_one_write() -> None:
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", "11")])
        return [b'{"ok":true}']
    answer, writes = served(app)
    assert len(writes) == 1 and writes[0] == answer
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'\r\n\r\n{"ok":true}')


def test_a_stream_sends_its_first_piece_with_the_head_and_each_later_one_alone() -> None:
    def app(environ: dict, start_response: Callable) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
    answer, writes = served(app)
    assert writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert writes[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]
    assert answer == b"".join(writes)


def test_a_large_first_piece_is_not_copied_behind_the_head() -> None:
    body = b"x" * (ONE_WRITE_LIMIT + 1)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    answer, writes = served(app)
    assert len(writes) == 2 and writes[1] == body and answer.endswith(body)


def echo_headers(environ: dict, start_response: Callable) -> list[bytes]:
    body = repr(sorted((k, v) for k, v in environ.items() if k.startswith("HTTP_"))).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("extra", [b"X-A: 1\r\nX-B:  two \r\n",
                                   b"X-Long: first\r\n second\r\nX-B: 2\r\n"],
                         ids=["plain", "folded"])
def test_request_headers_reach_the_app_as_pywsgi_reads_them(extra: bytes) -> None:
    request = GET.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")
    ours, _ = served(echo_headers, request)
    with patch.object(RecordingHandler, "MessageClass", pywsgi.WSGIHandler.MessageClass):
        theirs, _ = served(echo_headers, request)
    assert ours.split(b"\r\n\r\n")[1] == theirs.split(b"\r\n\r\n")[1]
    assert b"HTTP_X_B" in ours


def test_a_header_line_too_long_is_a_400() -> None:
    request = GET.replace(b"\r\n\r\n", b"\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n")
    answer, _ = served(echo_headers, request)
    assert answer.startswith(b"HTTP/1.1 400")


def test_a_worker_freezes_its_startup_heap_and_collects_less_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ggevent.GeventPyWSGIWorker, "load_wsgi", lambda self: None)
    threshold = gc.get_threshold()
    try:
        GatewayWorker.load_wsgi(object.__new__(GatewayWorker))
        assert gc.get_freeze_count() > 1000  # this test process's heap, as the app's would be
        assert gc.get_threshold() == (GC_FIRST_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class PartialSocket:
    """A client socket whose send() takes only ``takes`` bytes at a time."""

    def __init__(self, takes: int, fails: bool = False) -> None:
        self.takes, self.fails, self.calls = takes, fails, []

    def send(self, data: bytes) -> int:
        if self.fails:
            raise BrokenPipeError(32, "Broken pipe")
        self.calls.append(("send", bytes(data)))
        return min(self.takes, len(data))

    def sendall(self, data: memoryview) -> None:
        self.calls.append(("sendall", bytes(data)))


def bare_handler(sock: PartialSocket) -> IdleTimeoutHandler:
    handler = object.__new__(IdleTimeoutHandler)
    handler.socket, handler.code, handler.response_length = sock, 200, 0
    return handler


def test_a_write_is_one_send_and_what_it_did_not_take_goes_by_sendall() -> None:
    whole = bare_handler(PartialSocket(takes=100))
    whole._sendall(b"data: 1\n\n")
    assert whole.socket.calls == [("send", b"data: 1\n\n")] and whole.response_length == 9
    partial = bare_handler(PartialSocket(takes=3))
    partial._sendall(b"hello world")
    assert partial.socket.calls == [("send", b"hello world"), ("sendall", b"lo world")]
    assert partial.response_length == 11


def test_a_failed_write_marks_the_request_and_raises() -> None:
    handler = bare_handler(PartialSocket(takes=0, fails=True))
    with pytest.raises(BrokenPipeError):
        handler._sendall(b"x")
    assert handler.code == -200 and handler.status.startswith("socket error")
    assert handler.response_length == 0
