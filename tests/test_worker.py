"""The worker class, its handler on a real gevent server, and the probe of a client's connection."""

from __future__ import annotations

import gc
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from unittest.mock import patch

import gevent.socket
import pytest
from flask import Flask
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
ANSWER_WAIT = 3.0  # a server that never answers or closes fails a test instead of hanging it


def served(app: Callable[..., Iterable[bytes]], request: bytes = GET, *,
           half_close: bool = False) -> tuple[bytes, list[bytes]]:
    """Send raw bytes through gevent's server with the gateway's handler; return what came back."""
    RecordingHandler.writes = []
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=RecordingHandler, log=None)
    server.start()
    try:
        with gevent.socket.create_connection(server.address) as client:
            client.settimeout(ANSWER_WAIT)
            client.sendall(request)
            if half_close:  # the client sends no more, yet still reads
                client.shutdown(socket.SHUT_WR)
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


def answered(answer: bytes) -> tuple[int, dict[str, str], Any]:
    """Split one HTTP answer into its status, its headers (lower-case names) and JSON body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def echo_body(environ: dict, start_response: Callable) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def quick_idle(monkeypatch: pytest.MonkeyPatch) -> float:
    """Make the handler's idle timeout short for one test (restored after it)."""
    monkeypatch.setattr(IdleTimeoutHandler, "idle_seconds", 0.2)
    return 0.2


def with_headers(*lines: bytes, request: bytes = GET) -> bytes:
    return request.replace(b"\r\n\r\n", b"\r\n" + b"".join(line + b"\r\n" for line in lines)
                           + b"\r\n")


REFUSED_HEADS = {
    "101 headers": (with_headers(*(b"X-%d: 1" % i for i in range(101))), 400, "bad_request"),
    "long URL": (GET.replace(b"/", b"/" + b"a" * 9000, 1), 414, "uri_too_long"),
    "long header line": (with_headers(b"X-A: " + b"a" * 70000), 400, "bad_request"),
    "Content-Length abc": (with_headers(b"Content-Length: abc"), 400, "bad_request"),
    "Content-Length -1": (with_headers(b"Content-Length: -1"), 400, "bad_request"),
    "HTTP/2.0": (GET.replace(b"HTTP/1.1", b"HTTP/2.0"), 400, "bad_request"),
    "HTTP/1": (GET.replace(b"HTTP/1.1", b"HTTP/1"), 400, "bad_request"),
    "two lengths": (with_headers(b"Content-Length: 30", b"Content-Length: 5")
                    + b"x" * 30, 400, "bad_request"),
    "length and chunked": (with_headers(b"Content-Length: 5", b"Transfer-Encoding: chunked")
                           + b"5\r\nhello\r\n0\r\n\r\n", 400, "bad_request"),
    "gzip coding": (with_headers(b"Transfer-Encoding: gzip", b"Content-Length: 5") + b"hello",
                    400, "bad_request"),
}


@pytest.mark.parametrize(("request_bytes", "status", "kind"), REFUSED_HEADS.values(),
                         ids=REFUSED_HEADS.keys())
def test_a_refused_head_gets_a_json_error_and_no_traceback(
        request_bytes: bytes, status: int, kind: str, capsys: pytest.CaptureFixture) -> None:
    answer, _ = served(echo_body, request_bytes)
    code, headers, body = answered(answer)
    assert (code, headers["content-type"], headers["connection"]) == (
        status, "application/json", "close")
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_repeats_of_one_content_length_are_one_length() -> None:
    request = with_headers(b"Content-Length: 5", b"Content-Length: 5") + b"hello"
    answer, _ = served(echo_body, request)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("head", [b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\nX-A"],
                         ids=["request line", "header lines"])
def test_a_head_that_stops_coming_is_ended_with_a_408(quick_idle: float, head: bytes) -> None:
    started = time.monotonic()
    code, _, body = answered(served(echo_body, head)[0])
    assert (code, body["error"]["type"]) == (408, "request_timeout")
    assert time.monotonic() - started < quick_idle * 2 + 0.5


def test_a_body_the_app_leaves_unread_cannot_stall_the_connection(quick_idle: float) -> None:
    request = with_headers(b"Content-Length: 100").replace(b"Connection: close", b"X-A: 1")
    answer, _ = served(echo_headers, request + b"0123456789")  # then silence
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 200")


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick_idle: float) -> None:
    assert served(echo_body, b"")[0] == b""


def test_requests_sent_back_to_back_on_one_connection_are_each_answered() -> None:
    first = GET.replace(b"Connection: close", b"Connection: keep-alive")
    answer, _ = served(echo_headers, first + GET)
    assert answer.count(b"HTTP/1.1 200 OK") == 2


def test_an_app_that_fails_before_answering_gets_pywsgi_a_json_500() -> None:
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        raise RuntimeError("a bug in the app")
    code, headers, body = answered(served(app)[0])
    assert (code, headers["content-type"]) == (500, "application/json")
    assert body["error"]["type"] == "internal_error"


@pytest.fixture
def gateway_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(GATEWAY_AUTH_DISABLED="1", GATEWAY_RATE_LIMIT_DISABLED="1")


GENERATE = (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
BAD_BODIES = {
    "cut at its length": (GENERATE + b"Content-Length: 100\r\n\r\n" + b'{"model":1', True, 400),
    "cut mid-chunk": (GENERATE + b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc", True, 400),
    "stalled": (GENERATE + b"Content-Length: 100\r\n\r\n" + b'{"model":1', False, 408),
}


@pytest.mark.parametrize(("request_bytes", "half_close", "status"), BAD_BODIES.values(),
                         ids=BAD_BODIES.keys())
def test_a_body_that_ends_early_or_stalls_is_a_json_error_not_a_500(
        gateway_app: Flask, quick_idle: float, caplog: pytest.LogCaptureFixture,
        request_bytes: bytes, half_close: bool, status: int) -> None:
    answer, _ = served(gateway_app, request_bytes, half_close=half_close)
    code, headers, body = answered(answer)
    assert (code, headers["content-type"]) == (status, "application/json")
    assert body["error"]["type"] == ("bad_request" if status == 400 else "request_timeout")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_body_with_invalid_chunks_is_one_400_and_the_connection_closes(
        gateway_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    request = GENERATE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    answer, _ = served(gateway_app, request)  # a keep-alive request: the server closes
    assert answer.count(b"HTTP/1.1 ") == 1
    code, _, body = answered(answer)
    assert (code, body["error"]["type"]) == (400, "bad_request")
    assert "chunked encoding is invalid" in body["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


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
