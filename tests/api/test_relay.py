"""SSE encoding, heartbeats, and closing the upstream whatever happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from flask_inference_gateway.api.native.wire import GatewayEvents, encode_pieces
from flask_inference_gateway.api.relay import PING, Relay, stream_response
from flask_inference_gateway.core.errors import BackendStreamBroken
from flask_inference_gateway.core.types import StreamOutcome, Usage
from tests.sse import COMMENT, parse_sse


class StubStream:
    """A TokenStream stand-in: yields batches (None stands for silence), then fails or ends."""

    def __init__(self, pieces: list[str | None], fail: Exception | None = None) -> None:
        self.pieces, self.fail = pieces, fail
        self.model, self.done_reason, self.usage = "m", "stop", Usage(3, 2)
        self.closed = 0

    def batches(self, heartbeat: float) -> Iterator[list[str]]:
        for piece in self.pieces:
            yield [] if piece is None else [piece]
        if self.fail:
            raise self.fail

    def close(self) -> None:
        self.closed += 1


class StubGeneration:
    """A Generation stand-in: closing it closes its stream and says how it ended."""

    def __init__(self, stream: StubStream) -> None:
        self.stream = stream

    def close(self) -> StreamOutcome:
        self.stream.close()
        return StreamOutcome(finished=False, pieces=0, usage=Usage(), first_piece_at=None)


def sse_events(stream: StubStream, heartbeat: float) -> Iterator[bytes]:
    """Relay ``stream`` in the gateway's own events, as a view's response does."""
    return Relay(StubGeneration(stream), heartbeat).encoded(GatewayEvents())  # type: ignore[arg-type]


def sse_response(stream: StubStream, heartbeat: float):  # noqa: ANN201
    """Return the response that relays ``stream``."""
    with Flask(__name__).test_request_context():
        return stream_response(lambda: StubGeneration(stream),  # type: ignore[arg-type]
                               lambda _stream: GatewayEvents(), heartbeat)


def events(raw: list[bytes]) -> list[tuple[str | None, dict | None]]:
    """Parse the encoded writes of a stream into (event name, data) pairs."""
    return parse_sse(b"".join(raw))


def test_pieces_then_done() -> None:
    stream = StubStream(["Hel", "lo \"q\""])
    got = events(list(sse_events(stream, heartbeat=5)))  # type: ignore[arg-type]
    assert got == [(None, {"text": "Hel"}), (None, {"text": 'lo "q"'}),
                   (None, {"done": True, "done_reason": "stop",
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                     "total_tokens": 5}})]
    assert stream.closed


@pytest.mark.parametrize(("fail", "type_"), [
    (BackendStreamBroken(), "backend_stream_broken"),
    (RuntimeError("internal secret"), "internal_error"),
], ids=["gateway-error", "unexpected"])
def test_failure_mid_stream_ends_with_an_error_event(fail: Exception, type_: str) -> None:
    stream = StubStream(["a"], fail=fail)
    raw = list(sse_events(stream, heartbeat=5))  # type: ignore[arg-type]
    name, data = events(raw)[-1]
    assert name == "error" and data["error"]["type"] == type_
    assert b"secret" not in b"".join(raw)
    assert stream.closed


def test_client_leaving_closes_the_upstream() -> None:
    stream = StubStream(["a", "b", "c"])
    gen = sse_events(stream, heartbeat=5)  # type: ignore[arg-type]
    next(gen)
    gen.close()
    assert stream.closed


def test_response_closes_a_stream_that_never_started() -> None:
    stream = StubStream(["a"])
    response = sse_response(stream, heartbeat=5)  # type: ignore[arg-type]
    # What a WSGI server does when the client left before the first byte.
    app_iter = response({"REQUEST_METHOD": "POST"}, lambda status, headers: None)
    app_iter.close()
    assert stream.closed
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.mimetype == "text/event-stream"


def test_silence_is_sent_as_a_ping_comment() -> None:
    raw = list(sse_events(StubStream(["a", None, "b"]), heartbeat=1))  # type: ignore[arg-type]
    assert raw[1] == PING
    assert events(raw)[1] == COMMENT


def test_pieces_that_arrived_together_leave_in_one_write() -> None:
    assert encode_pieces(["a", "b"]) == b'data: {"text":"a"}\n\ndata: {"text":"b"}\n\n'
