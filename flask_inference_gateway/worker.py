"""The gunicorn worker the gateway runs under, and the probe of a client's connection.

``gunicorn.conf.py`` names ``GatewayWorker``; gunicorn's master imports this
module before any worker has patched its sockets with gevent, so nothing here
imports Flask, ``requests`` or the rest of the gateway at import time.
"""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import gevent
from gevent import pywsgi
from gunicorn.workers import ggevent

from flask_inference_gateway.core.errors import (
    BadRequest,
    ClientLeft,
    GatewayError,
    RequestTimeout,
    URITooLong,
)
from flask_inference_gateway.core.heads import (
    check_request_line,
    error_answer,
    error_body,
    error_head,
    parse_request_headers,
)
from flask_inference_gateway.core.types import never_gone

# Connections a worker accepts per turn of its event loop. Gunicorn's gevent
# workers accept one at a time when there are several workers; under load an
# event-loop turn takes tens of milliseconds, so a burst of new clients waited
# seconds in the listen queue (stream-1000 benchmark: TTFT p99 8.7 s at 1,
# 0.9 s at 16). 16 keeps the burst short and still spreads it over workers.
ACCEPT_BATCH = 16
ONE_WRITE_LIMIT = 64 * 1024  # a first body piece sent with the head, at most
# Python's cyclic collector runs a young-generation pass every 700 net new
# container objects, and each pass promotes what is still alive: with a
# thousand streams in flight that is most of it, so the older generations
# fill and their passes scan the whole heap of live streams (up to 130 ms a
# pause). At stream-1000 the collector took 2.2-2.8 s of each worker's ~25 s
# of CPU; with the startup heap frozen and a first threshold of 20,000, 0.35 s.
# Reference counting frees the gateway's garbage; the collector only finds
# cycles, which this only lets live a little longer.
GC_FIRST_THRESHOLD = 20_000


def client_probe(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """Return a check of whether the client of a request (its WSGI environ) has left."""
    sock = environ.get("gunicorn.sock")
    if sock is None:
        return never_gone

    def gone() -> bool:
        # Peek through a duplicate, non-blocking handle: the connection's own
        # socket belongs to the greenlet serving it, and waiting on it here
        # would collide with that greenlet (and select() fails past fd 1024).
        try:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as probe:
                probe.setblocking(False)
                # Nothing to read and not readable: still there. Closed: b"".
                return probe.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


class BatchAcceptServer(ggevent.PyWSGIServer):
    """gevent's WSGI server, accepting ``ACCEPT_BATCH`` connections per loop turn."""

    def set_max_accept(self) -> None:
        self.max_accept = ACCEPT_BATCH


def body_error(exc: OSError, seconds: float) -> GatewayError:
    """Return the error a failed read of a request body (``exc``) is answered with."""
    if isinstance(exc, pywsgi._InvalidClientInput):
        return BadRequest(f"The request body's chunked encoding is invalid ({exc.args[0]}).")
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"The request body stalled: nothing came for {seconds:g} s.")
    if exc.errno is None:  # pywsgi's own: the client ended the body early
        return BadRequest("The request body ended before its Content-Length or last chunk.")
    return ClientLeft()


class ClientInput(pywsgi.Input):
    """pywsgi's request body: each wait bounded, each failure the gateway's error."""

    __slots__ = ("conn", "seconds", "error")

    def __init__(self, body: pywsgi.Input, conn: Any, seconds: float) -> None:
        super().__init__(body.rfile, body.content_length, body.socket, body.chunked_input)
        self.conn, self.seconds, self.error = conn, seconds, None

    def read(self, length: int | None = None) -> bytes:
        """Read up to ``length`` bytes of the body (all of it by default)."""
        return self._bounded(super().read, length)

    def readline(self, size: int | None = None) -> bytes:
        """Read one line of the body, of at most ``size`` bytes."""
        return self._bounded(super().readline, size)

    def _bounded(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        if self.error is not None:
            raise self.error
        # A sender that stops mid-body must not hold the connection: each wait for
        # more of it (a recv) may last ``seconds``, gunicorn's keepalive, as an
        # idle connection may. Only around reads: the answer's writes, a
        # WebSocket's long waits, are not bounded by the socket's timeout.
        timeout = self.conn.gettimeout()
        self.conn.settimeout(self.seconds)
        try:
            return read(size)
        except OSError as exc:  # pywsgi's errors, the timeout's, the socket's
            self.error = body_error(exc, self.seconds)
            raise self.error from exc
        finally:
            self.conn.settimeout(timeout)

    def _discard(self) -> None:
        # After a failed read, where the body ends is unknown: the connection
        # closes instead of reading on (and the error was answered already).
        if self.error is None:
            with suppress(GatewayError):
                super()._discard()


class IdleTimeoutHandler(ggevent.PyWSGIHandler):
    """gevent's WSGI handler, closing idle and silent connections, refusing in JSON."""

    idle_seconds = 5.0  # gunicorn's keepalive, set by the worker
    head_due: float | None = None  # when the head being read must be whole (monotonic)

    def read_requestline(self) -> Any:
        """Wait ``idle_seconds`` for a request; its head then has as long to arrive."""
        buffered = self._within(self.idle_seconds, self.rfile.peek, 1)
        if not buffered:  # idle for too long, or b"": the client closed the connection
            return None
        if b"\r\n\r\n" in buffered:  # the whole head came at once (nearly always): no waits
            self.head_due = None
            return super().read_requestline()
        self.head_due = time.monotonic() + self.idle_seconds
        line = self._within(self.idle_seconds, super().read_requestline)
        if line is None:  # begun, never finished: say why the connection closes
            with suppress(OSError):
                self.socket.sendall(error_answer(self._head_timeout()))
        return line

    @staticmethod
    def _within(seconds: float, read: Callable[..., Any], *args: Any) -> Any:
        with gevent.Timeout(seconds, False):
            return read(*args)
        return None

    def read_request(self, raw_requestline: str) -> bool:
        """Parse the request line and header lines, refusing a head that is late or invalid."""
        check_request_line(raw_requestline)
        if self.head_due is None:
            return super().read_request(raw_requestline)
        timer = gevent.Timeout(max(0.0, self.head_due - time.monotonic()))
        try:
            with timer:
                return super().read_request(raw_requestline)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise self._head_timeout() from None

    def _head_timeout(self) -> GatewayError:
        return RequestTimeout(f"The request head did not arrive within {self.idle_seconds:g} s.")

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        """Parse a request's header lines (pywsgi's rules, without the email parser)."""
        return parse_request_headers(fp, _class=pywsgi.OldMessage)

    def handle_one_request(self) -> Any:
        """Serve one request; pywsgi's own answer to a too long request line is JSON too."""
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[1] == pywsgi._REQUEST_TOO_LONG_RESPONSE:
            too_long = f"The request line is longer than {pywsgi.MAX_REQUEST_LINE} bytes."
            return "414", error_answer(URITooLong(too_long))
        return result

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        # pywsgi's hook for a head it cannot read: its answer had an empty body,
        # and an error other than a ValueError printed a traceback. The gateway's
        # JSON error instead, and one log line that says why.
        error = ex if isinstance(ex, GatewayError) else BadRequest(
            "The request line or its header lines are malformed.")
        self.log_error("Invalid request (from %s): %s: %s", self.client_address,
                       type(ex).__name__, ex)
        return str(error.status), error_answer(error)

    def _send_error_response_if_possible(self, error_code: int) -> None:
        # pywsgi's answer when the app failed before answering: plain text, the
        # 400's empty. The gateway's JSON error instead.
        if self.response_length:
            self.close_connection = True
            return
        error = BadRequest("The request body is malformed.") if error_code == 400 \
            else GatewayError()
        body = error_body(error)
        try:
            self.start_response(*error_head(error, body))
            self.write(body)
        except OSError:
            self.close_connection = True

    def get_environ(self) -> dict[str, Any]:
        """Return the request's WSGI environ, its body read through ``ClientInput``."""
        environ = super().get_environ()
        body, self.wsgi_input = self.wsgi_input, ClientInput(self.wsgi_input, self.socket,
                                                              self.idle_seconds)
        if environ["wsgi.input"] is body:  # not a WebSocket's: that reads the raw socket
            environ["wsgi.input"] = self.wsgi_input
        return environ

    def handle_one_response(self) -> None:
        """Answer the request; after a body that failed to read, close the connection."""
        super().handle_one_response()
        if self.wsgi_input.error is not None:
            self.close_connection = True

    def _sendall(self, data: bytes) -> None:
        # gevent's sendall() asks the kernel for the socket's send buffer size
        # before every write: a getsockopt call per token. One send() takes a
        # token's bytes whole; sendall() is left for what it did not take.
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as exc:  # as pywsgi's own: the log line says why, the code turns < 0
            self.status = f"socket error: {exc}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data: bytes) -> None:
        # pywsgi sends the head and then the first piece of the body: two
        # system calls for every response. Both go out in one write instead
        # (a body piece past ONE_WRITE_LIMIT is not copied behind the head).
        if len(data) > ONE_WRITE_LIMIT:
            return super()._write_with_headers(data)
        parts: list[bytes] = []
        sendall = self._sendall
        self._sendall = parts.append  # type: ignore[method-assign]
        try:
            super()._write_with_headers(data)
        finally:
            del self._sendall
        sendall(b"".join(parts))

    def log_request(self) -> None:
        # The gateway writes its own access line; gunicorn's would cost about
        # 6% of a request's CPU whenever a log config is set.
        pass


class GatewayWorker(ggevent.GeventPyWSGIWorker):
    """Gunicorn's gevent worker on gevent's own WSGI server (pywsgi), draining on SIGTERM.

    pywsgi parses requests and writes chunks with less Python work than
    gunicorn's own parser: about 25% more requests per second on the same
    cores (json-fast benchmark: 1,800 vs 1,450 rps).
    """

    server_class = BatchAcceptServer
    wsgi_handler = IdleTimeoutHandler

    def load_wsgi(self) -> None:
        """Load the app, then keep its startup objects out of the collector's passes."""
        super().load_wsgi()
        gc.collect()
        gc.freeze()  # the app, its modules and settings: alive until the worker exits
        first, second, third = gc.get_threshold()
        gc.set_threshold(max(GC_FIRST_THRESHOLD, first), second, third)

    def init_process(self) -> None:
        """Take the idle timeout from gunicorn's keepalive, then run the worker."""
        IdleTimeoutHandler.idle_seconds = float(self.cfg.keepalive)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Drain on SIGTERM: stop accepting, and end streams still open at the deadline."""
        super().handle_exit(sig, frame)
        gevent.spawn(self._end_streams_before_kill)

    def _end_streams_before_kill(self) -> None:
        # Streams still running this close to graceful_timeout would be cut by
        # the master's SIGKILL: end them with an error event instead, and stop
        # their generations upstream.
        graceful = float(self.cfg.graceful_timeout)
        gevent.sleep(max(0.0, graceful - min(2.0, graceful / 4)))
        from flask_inference_gateway.core.errors import ShuttingDown
        from flask_inference_gateway.upstream.stream import interrupt_all

        ended = interrupt_all(ShuttingDown("The gateway is shutting down and ended this stream; "
                                           "retry the request."))
        if ended:
            self.log.warning("graceful timeout: ended %d stream(s) with an error event", ended)
