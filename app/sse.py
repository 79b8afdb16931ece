"""Server-sent events: encode a TokenStream, keep it alive, stop it when the client leaves."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from flask import Response

from app.backend import TokenStream
from app.errors import GatewayError

log = logging.getLogger(__name__)

HEARTBEAT = object()
PING = b": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


class _Failure:
    """An exception raised by the source, carried across the hand-off queue."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def with_heartbeat(source: Iterable[Any], interval: float) -> Iterator[Any]:
    """Yield the items of ``source``, and HEARTBEAT after each ``interval`` of silence.

    The source is read in its own thread (a greenlet under gevent), because a
    blocking upstream read cannot be interrupted safely mid-chunk.
    """
    handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for item in source:
                handoff.put(item)
        except BaseException as exc:  # the consumer decides what it means
            handoff.put(_Failure(exc))
        else:
            handoff.put(_END)

    threading.Thread(target=pump, name="upstream-reader", daemon=True).start()
    while True:
        try:
            item = handoff.get(timeout=interval)
        except queue.Empty:
            yield HEARTBEAT
            continue
        if item is _END:
            return
        if isinstance(item, _Failure):
            raise item.exc
        yield item


def event(data: dict[str, Any], name: str | None = None) -> bytes:
    """Encode one SSE event."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def sse_events(stream: TokenStream, heartbeat: float) -> Iterator[bytes]:
    """Yield the SSE events of ``stream``; always end with a done or an error event."""
    try:
        for piece in with_heartbeat(stream, heartbeat):
            if piece is HEARTBEAT:
                yield PING
            else:
                yield b'data: {"text":' + orjson.dumps(piece) + b"}\n\n"
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
    response = Response(sse_events(stream, heartbeat), mimetype="text/event-stream",
                        headers=SSE_HEADERS, direct_passthrough=True)
    # A generator that never started runs no finally: close the upstream here too.
    response.call_on_close(stream.close)
    return response
