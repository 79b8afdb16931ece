"""Server-sent events: encode a TokenStream, keep it alive, stop it when the client leaves.

What the events say is an ``Encoder``'s business: the gateway's own events
(``GatewayEvents``) or OpenAI's chunks (``app/api/openai_wire.py``); the pings,
the error after the first byte and the closing of the upstream are shared.
A line format other than SSE (Ollama's NDJSON, ``app/api/ollama_wire.py``)
passes its own heartbeat and media type.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

import orjson
from flask import Response

from app.backend import TokenStream
from app.errors import GatewayError

log = logging.getLogger(__name__)
dumps = orjson.dumps

PING = b": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any], name: str | None = None) -> bytes:
    """Encode one SSE event."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def encode_pieces(pieces: list[str]) -> bytes:
    """Encode pieces that arrived together as one write of ``data: {"text"}`` events."""
    return b"".join([b'data: {"text":' + dumps(piece) + b"}\n\n" for piece in pieces])


class Encoder(Protocol):
    """Turns one stream's pieces, its end and its failure into SSE bytes."""

    def pieces(self, pieces: list[str]) -> bytes:
        """Encode pieces that arrived together as one write."""

    def done(self, stream: TokenStream) -> bytes:
        """Encode the end of a stream that finished."""

    def error(self, error: GatewayError) -> bytes:
        """Encode a failure after the stream started."""


class GatewayEvents:
    """The gateway's own events: ``{"text"}`` per piece, then ``{"done", ...}`` or an error."""

    def pieces(self, pieces: list[str]) -> bytes:
        """Encode pieces as ``data: {"text"}`` events."""
        return encode_pieces(pieces)

    def done(self, stream: TokenStream) -> bytes:
        """Encode the done event, with how the stream ended and its usage."""
        return event({"done": True, "done_reason": stream.done_reason,
                      "usage": stream.usage.to_dict()})

    def error(self, error: GatewayError) -> bytes:
        """Encode ``event: error`` with the gateway's error object."""
        return event(error.to_dict(), "error")


GATEWAY_EVENTS = GatewayEvents()


def sse_events(stream: TokenStream, heartbeat: float, encoder: Encoder = GATEWAY_EVENTS,
               ping: bytes = PING) -> Iterator[bytes]:
    """Yield the SSE events of ``stream``; always end with a done or an error event."""
    try:
        for pieces in stream.batches(heartbeat):
            yield encoder.pieces(pieces) if pieces else ping
        yield encoder.done(stream)
    except GatewayError as exc:
        yield encoder.error(exc)
    except Exception:
        log.exception("stream of %s failed", stream.model)
        yield encoder.error(GatewayError())
    finally:
        stream.close()


def sse_response(stream: TokenStream, heartbeat: float, encoder: Encoder = GATEWAY_EVENTS,
                 *, ping: bytes = PING, mimetype: str = "text/event-stream") -> Response:
    """Return a response that relays ``stream`` as it arrives: SSE unless told otherwise."""
    # Not direct_passthrough: werkzeug would then hand the bare generator to the
    # server and skip the response's close callbacks below.
    response = Response(sse_events(stream, heartbeat, encoder, ping), mimetype=mimetype,
                        headers=SSE_HEADERS)
    # A generator that never started runs no finally: close the upstream here too.
    response.call_on_close(stream.close)
    return response
