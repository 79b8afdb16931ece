"""Read a streamed upstream body as its bytes arrive, with heartbeats during silence.

requests' ``iter_content`` decodes one HTTP chunk per loop, several Python
calls deep, and blocks without a way to wake up for a heartbeat. For streams
the gateway instead reads the pooled connection's socket directly: each
wake-up takes every byte that has arrived (all the tokens queued so far) in
one ``recv``, and a socket timeout marks backend silence without losing data.
The connection goes back to the pool when the body ended cleanly. Anything
the fast path does not understand (compressed bodies, mocked responses) is
read through ``iter_content`` instead.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator

import requests

from flask_inference_gateway.core.errors import BackendStreamBroken, BackendTimeout

READ_SIZE = 65536
SILENCE = None  # yielded when the backend said nothing for a heartbeat interval


class ChunkedDecoder:
    """Decode HTTP/1.1 chunked transfer coding incrementally."""

    def __init__(self) -> None:
        self.done = False
        self._buffer = b""
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the current chunk's trailing CRLF is still to come

    def feed(self, data: bytes) -> bytes:
        """Return the payload bytes contained in ``data``."""
        buf, pos, out = self._buffer + data, 0, []
        while not self.done:
            if self._left:
                piece = buf[pos:pos + self._left]
                out.append(piece)
                pos += len(piece)
                self._left -= len(piece)
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if len(buf) - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise BackendStreamBroken("The model backend sent a malformed chunk.")
                pos, self._crlf = pos + 2, False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size_field = buf[pos:end].split(b";", 1)[0].strip()
            pos = end + 2
            try:
                self._left = int(size_field, 16)
            except ValueError:
                raise BackendStreamBroken("The model backend sent a malformed chunk.") from None
            # The last chunk: what follows (trailers) carries no payload.
            self.done = self._left == 0
        self._buffer = buf[pos:]
        return b"".join(out)


def raw_parts(response: requests.Response) -> tuple[socket.socket, object] | None:
    """Return the socket and buffered reader behind ``response``, when reachable."""
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    connection = getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    buffered = getattr(fp, "fp", None)
    encoding = response.headers.get("Content-Encoding", "identity").lower()
    if sock is None or buffered is None or encoding != "identity":
        return None
    return sock, buffered


class BodyReader:
    """Yield payload bytes of a streamed response as they arrive; SILENCE when idle.

    Silence is bounded by ``first_timeout`` until the first byte arrives, by
    ``read_timeout`` between later bytes, and the whole read by ``deadline``
    (a ``time.monotonic()`` value). ``heartbeat`` may change between reads.
    """

    def __init__(self, response: requests.Response, read_timeout: float, *,
                 first_timeout: float | None = None, deadline: float = math.inf) -> None:
        self.response = response
        self.read_timeout = read_timeout
        self.first_timeout = read_timeout if first_timeout is None else first_timeout
        self.deadline = deadline
        self.heartbeat = read_timeout
        self.complete = False
        self.got_data = False

    def read(self, heartbeat: float) -> Iterator[bytes | None]:
        """Yield payload bytes, or SILENCE after each ``heartbeat`` of backend silence."""
        self.heartbeat = heartbeat
        parts = raw_parts(self.response)
        if parts is None:
            yield from self._read_with_requests()
        else:
            yield from self._read_socket(*parts)

    def _read_with_requests(self) -> Iterator[bytes]:
        for data in self.response.iter_content(chunk_size=None):
            self.got_data = True
            yield data
        self.complete = True

    def _read_socket(self, sock: socket.socket, buffered: object) -> Iterator[bytes | None]:
        decoder = ChunkedDecoder() if self.response.raw.chunked else None
        length = self.response.raw.length_remaining
        for data in self._recv(sock, buffered):
            if data is SILENCE:
                yield SILENCE
                continue
            payload = decoder.feed(data) if decoder else data
            if length is not None:
                length -= len(payload)
            if payload:
                yield payload
            if (decoder and decoder.done) or length == 0:
                self.complete = True
                self._release()
                return
        if decoder or length:
            raise BackendStreamBroken()
        self.complete = True  # a body delimited by the connection closing

    def _wait(self, last_data: float) -> float:
        """Return how long the next read may wait, or raise when a limit has passed."""
        now = time.monotonic()
        if now >= self.deadline:
            raise BackendTimeout("The model backend did not finish within the total deadline.")
        limit = self.read_timeout if self.got_data else self.first_timeout
        silent = now - last_data
        if silent >= limit:
            raise BackendTimeout() if self.got_data else BackendTimeout(
                "The model backend sent no token within the first-token timeout.")
        return min(self.heartbeat, limit - silent, self.deadline - now)

    def _recv(self, sock: socket.socket, buffered: object) -> Iterator[bytes | None]:
        # Bytes read ahead with the headers sit in the buffered reader: take
        # them without blocking, then read the socket itself.
        sock.settimeout(0.0)
        try:
            first = buffered.read1(READ_SIZE)  # type: ignore[attr-defined]
        except BlockingIOError:
            first = b""
        except OSError as exc:  # reset right after the head
            raise BackendStreamBroken() from exc
        if first:
            self.got_data = True
            yield first
        last_data, current = time.monotonic(), -1.0
        while True:
            wait = self._wait(last_data)
            if wait != current:  # settimeout only when the wait changes
                sock.settimeout(wait)
                current = wait
            try:
                data = sock.recv(READ_SIZE)
            except (socket.timeout, BlockingIOError):
                if wait >= self.heartbeat:  # a full heartbeat of silence, not a limit
                    yield SILENCE
                continue
            except OSError as exc:
                raise BackendStreamBroken() from exc
            if not data:
                return
            last_data, self.got_data = time.monotonic(), True
            yield data

    def _release(self) -> None:
        """Hand the connection back to the pool once its body was fully read."""
        raw = self.response.raw
        raw._fp._close_conn()  # the buffered reader is empty: close it, keep the socket
        raw.release_conn()
