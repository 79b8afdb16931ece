"""Server-sent events: encode a TokenStream, keep it alive, stop it when the client leaves."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

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


def sse_events(stream: TokenStream, heartbeat: float) -> Iterator[bytes]:
    """Yield the SSE events of ``stream``; always end with a done or an error event."""
    try:
        for pieces in stream.batches(heartbeat):
            yield encode_pieces(pieces) if pieces else PING
        yield event({"done": True, "done_reason": stream.done_reason,
                     "usage": stream.usage.to_dict()})
    except GatewayError as exc:
        yield event(exc.to_dict(), "error")
    except Exception:
        log.exception("stream of %s failed", stream.model)
        yield event(GatewayError().to_dict(), "error")
    finally:
        stream.close()


def sse_response(stream: TokenStream, heartbeat: float) -> Response:
    """Return a text/event-stream response that relays ``stream`` as it arrives."""
    # Not direct_passthrough: werkzeug would then hand the bare generator to the
    # server and skip the response's close callbacks below.
    response = Response(sse_events(stream, heartbeat), mimetype="text/event-stream",
                        headers=SSE_HEADERS)
    # A generator that never started runs no finally: close the upstream here too.
    response.call_on_close(stream.close)
    return response
