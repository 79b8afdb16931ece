"""The gateway's own wire format: whole answers and SSE events of /v1/generate and /v1/chat.

Tool calls are written as Ollama writes them (arguments as an object): whole,
in the answer's message, or in a stream's done event.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from flask_inference_gateway.api.calls import ollama_call, reason_with_calls
from flask_inference_gateway.api.common import new_id
from flask_inference_gateway.api.native import errors
from flask_inference_gateway.api.relay import PING, event
from flask_inference_gateway.core.errors import GatewayError
from flask_inference_gateway.core.pieces import Answer, Delta, Piece
from flask_inference_gateway.core.types import Completion, Op
from flask_inference_gateway.upstream.stream import TokenStream

dumps = orjson.dumps
ID_PREFIXES = {Op.GENERATE: "gen", Op.CHAT: "chat"}


def whole_answer(op: Op, completion: Completion) -> dict[str, Any]:
    """Return a finished completion: its text, or chat's assistant message."""
    calls = completion.tool_calls
    body: dict[str, Any] = {"id": new_id(ID_PREFIXES[op]), "model": completion.model,
                            "done_reason": reason_with_calls(completion.done_reason, bool(calls)),
                            "usage": completion.usage.to_dict(), "created": int(time.time())}
    if op is Op.CHAT:
        message: dict[str, Any] = {"role": "assistant", "content": completion.text}
        if calls:
            message["tool_calls"] = [ollama_call(call) for call in calls]
        body["message"] = message
    else:
        body["text"] = completion.text
    if completion.thinking:
        body["thinking"] = completion.thinking
    if completion.logprobs:
        body["logprobs"] = completion.logprobs
    return body


def encode_pieces(pieces: list[str]) -> bytes:
    """Encode text pieces that arrived together as one write of ``data: {"text"}`` events."""
    return b"".join([b'data: {"text":' + dumps(piece) + b"}\n\n" for piece in pieces])


class GatewayEvents:
    """The gateway's own events: ``{"text"}`` per piece, then ``{"done", ...}`` or an error.

    A piece with thinking or log probabilities adds ``thinking`` and
    ``logprobs``; tool calls come whole in the done event.
    """

    ping = PING

    def __init__(self) -> None:
        self.calls = Answer()

    def pieces(self, pieces: list[Piece]) -> bytes:
        """Encode pieces as ``data: {"text"}`` events."""
        if all(type(piece) is str for piece in pieces):
            return encode_pieces(pieces)  # type: ignore[arg-type]
        return b"".join([encode_pieces([piece]) if type(piece) is str
                         else self.delta(piece) for piece in pieces])  # type: ignore[arg-type,list-item]

    def delta(self, piece: Delta) -> bytes:
        """Encode a piece with more than text; keep its tool calls for the done event."""
        for call in piece.tool_calls:
            self.calls.add_call(call)
        data: dict[str, Any] = {"text": piece.text}
        if piece.thinking:
            data["thinking"] = piece.thinking
        if piece.logprobs:
            data["logprobs"] = list(piece.logprobs)
        return event(data) if piece.text or piece.thinking or piece.logprobs else b""

    def done(self, stream: TokenStream) -> bytes:
        """Encode the done event, with how the stream ended, its usage and tool calls."""
        calls = self.calls.tool_calls
        data: dict[str, Any] = {"done": True,
                                "done_reason": reason_with_calls(stream.done_reason, bool(calls)),
                                "usage": stream.usage.to_dict()}
        if calls:
            data["tool_calls"] = [ollama_call(call) for call in calls]
        return event(data)

    def error(self, error: GatewayError) -> bytes:
        """Encode ``event: error`` with the gateway's error object."""
        return event(errors.body(error), "error")
