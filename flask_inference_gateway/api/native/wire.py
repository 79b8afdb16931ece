"""The gateway's own wire format: whole answers and SSE events of /v1/generate and /v1/chat."""

from __future__ import annotations

import time
from typing import Any

import orjson

from flask_inference_gateway.api.common import new_id
from flask_inference_gateway.api.native import errors
from flask_inference_gateway.api.relay import PING, event
from flask_inference_gateway.core.errors import GatewayError
from flask_inference_gateway.core.types import Completion, Op
from flask_inference_gateway.upstream.stream import TokenStream

dumps = orjson.dumps
ID_PREFIXES = {Op.GENERATE: "gen", Op.CHAT: "chat"}

def whole_answer(op: Op, completion: Completion) -> dict[str, Any]:
    """Return a finished completion: its text, or chat's assistant message."""
    body: dict[str, Any] = {"id": new_id(ID_PREFIXES[op]), "model": completion.model,
                            "done_reason": completion.done_reason,
                            "usage": completion.usage.to_dict(), "created": int(time.time())}
    if op is Op.CHAT:
        body["message"] = {"role": "assistant", "content": completion.text}
    else:
        body["text"] = completion.text
    return body


def encode_pieces(pieces: list[str]) -> bytes:
    """Encode pieces that arrived together as one write of ``data: {"text"}`` events."""
    return b"".join([b'data: {"text":' + dumps(piece) + b"}\n\n" for piece in pieces])


class GatewayEvents:
    """The gateway's own events: ``{"text"}`` per piece, then ``{"done", ...}`` or an error."""

    ping = PING

    def pieces(self, pieces: list[str]) -> bytes:
        """Encode pieces as ``data: {"text"}`` events."""
        return encode_pieces(pieces)

    def done(self, stream: TokenStream) -> bytes:
        """Encode the done event, with how the stream ended and its usage."""
        return event({"done": True, "done_reason": stream.done_reason,
                      "usage": stream.usage.to_dict()})

    def error(self, error: GatewayError) -> bytes:
        """Encode ``event: error`` with the gateway's error object."""
        return event(errors.body(error), "error")


GATEWAY_EVENTS = GatewayEvents()
