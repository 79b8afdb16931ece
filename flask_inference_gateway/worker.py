"""The gunicorn worker the gateway runs under, and the probe of a client's connection.

``gunicorn.conf.py`` names ``GatewayWorker``; gunicorn's master imports this
module before any worker has patched its sockets with gevent, so nothing here
imports Flask, ``requests`` or the rest of the gateway at import time.
"""

from __future__ import annotations

import gc
import http.client
import socket
from collections.abc import Callable, Mapping
from typing import Any

import gevent
from gevent import pywsgi
from gunicorn.workers import ggevent

from flask_inference_gateway.core.heads import parse_headers
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


class IdleTimeoutHandler(ggevent.PyWSGIHandler):
    """gevent's WSGI handler, closing a connection idle for ``idle_seconds``."""

    idle_seconds = 5.0  # gunicorn's keepalive, set by the worker

    def read_requestline(self) -> Any:
        with gevent.Timeout(self.idle_seconds, False):
            return super().read_requestline()
        return None

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        """Parse a request's header lines (pywsgi's rules, without the email parser)."""
        try:
            return parse_headers(fp, _class=pywsgi.OldMessage)
        except http.client.LineTooLong:
            message = pywsgi.OldMessage()
            message.status = "Line too long"  # pywsgi answers 400
            return message

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
