"""The one owner of a token stream: open (and prime) it, write it, close it in ``finally``.

``stream_response`` opens the stream through the service, which primes it:
until then nothing has been sent, so a failure is still a plain HTTP error
(or is retried on another backend). The response it returns writes each
batch of pieces through the dialect's ``Encoder`` as they arrive, with a ping
during backend silence, and always ends with a done or an error event. When
the response ends (finished, failed, or the client left), the relay closes
the stream: the ``Generation`` settles the backend's slot, the key's charge
and the gauges in its fixed order, and the relay notes the outcome on the
request's record, which the server then finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
from flask import Response

from flask_inference_gateway.api.records import current_record
from flask_inference_gateway.core.errors import GatewayError
from flask_inference_gateway.core.types import StreamOutcome
from flask_inference_gateway.observability.record import RequestRecord
from flask_inference_gateway.service import Generation
from flask_inference_gateway.upstream.stream import TokenStream

log = logging.getLogger(__name__)

PING = b": ping\n\n"  # an SSE comment: keeps the connection and proxies awake
SSE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any], name: str | None = None) -> bytes:
    """Encode one SSE event."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class Encoder(Protocol):
    """Turns one stream's pieces, its end and its failure into the bytes a dialect sends."""

    ping: bytes  # sent after each heartbeat of backend silence

    def pieces(self, pieces: list[str]) -> bytes:
        """Encode pieces that arrived together as one write."""

    def done(self, stream: TokenStream) -> bytes:
        """Encode the end of a stream that finished."""

    def error(self, error: GatewayError) -> bytes:
        """Encode a failure after the stream started."""


class Verbatim:
    """Write a stream of the backend's own frames (upstream/verbatim.py) as they came."""

    def __init__(self, ping: bytes, end: bytes, error: Callable[[GatewayError], bytes]) -> None:
        self.ping = ping
        self._end = end  # what the dialect sends after the backend's last frame
        self._error = error

    def pieces(self, pieces: list[bytes]) -> bytes:
        """Join frames that arrived together into one write."""
        return b"".join(pieces)

    def done(self, stream: TokenStream) -> bytes:
        """Return the end of the stream: the backend's last frame has gone already."""
        return self._end

    def error(self, error: GatewayError) -> bytes:
        """Encode a failure in the dialect's shape."""
        return self._error(error)


class Relay:
    """Write one opened stream to its client, and close it once, whatever happens."""

    def __init__(self, generation: Generation, heartbeat: float,
                 record: RequestRecord | None = None) -> None:
        self.generation = generation
        self.stream = generation.stream
        self.heartbeat = heartbeat
        self._record = record  # held here: the stream outlives the request context
        self._closed = False

    def batches(self) -> Iterator[list[str]]:
        """Yield the stream's pieces as they arrive (``[]`` per heartbeat of silence)."""
        return self.stream.batches(self.heartbeat)

    def encoded(self, encoder: Encoder) -> Iterator[bytes]:
        """Yield the stream in ``encoder``'s bytes; always end with a done or an error."""
        ping = encoder.ping
        try:
            for pieces in self.batches():
                yield encoder.pieces(pieces) if pieces else ping
            yield encoder.done(self.stream)
        except GatewayError as exc:
            yield encoder.error(exc)
        except Exception:
            log.exception("stream of %s failed", self.stream.model)
            yield encoder.error(GatewayError())
        finally:
            self.close()

    def close(self) -> StreamOutcome:
        """Close the stream and settle it (once); note how it ended on the record."""
        outcome = self.generation.close()
        if not self._closed and self._record is not None:
            self._record.stream = outcome
        self._closed = True
        return outcome


def stream_response(open_stream: Callable[[], Generation],
                    encoder_for: Callable[[TokenStream], Encoder], heartbeat: float, *,
                    mimetype: str = SSE) -> Response:
    """Open a stream and return the response that relays it: SSE unless told otherwise.

    ``encoder_for`` returns the dialect's encoder for the opened stream (whose
    ``model`` is the one the service chose).
    """
    relay = Relay(open_stream(), heartbeat, current_record())
    # Not direct_passthrough: werkzeug would then hand the bare generator to the
    # server and skip the response's close callbacks below.
    response = Response(relay.encoded(encoder_for(relay.stream)), mimetype=mimetype,
                        headers=SSE_HEADERS)
    # A generator that never started runs no finally: close the stream here too.
    response.call_on_close(relay.close)
    return response
