"""OpenAI's wire format: whole answers, stream chunks, embeddings, finish reasons."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson

from flask_inference_gateway.api.calls import CallFragments, openai_call, reason_with_calls
from flask_inference_gateway.api.common import new_id
from flask_inference_gateway.api.openai import errors
from flask_inference_gateway.api.relay import PING, Encoder, Verbatim, event
from flask_inference_gateway.core.errors import GatewayError
from flask_inference_gateway.core.pieces import Delta, Piece
from flask_inference_gateway.core.types import Completion, Embeddings, Op, Usage
from flask_inference_gateway.upstream.stream import TokenStream

dumps = orjson.dumps
DONE = b"data: [DONE]\n\n"
OBJECTS = {Op.CHAT: "chat.completion", Op.GENERATE: "text_completion"}
CHUNK_OBJECTS = {Op.CHAT: "chat.completion.chunk", Op.GENERATE: "text_completion"}
ID_PREFIXES = {Op.CHAT: "chatcmpl", Op.GENERATE: "cmpl"}
# What OpenAI clients know; anything else a backend says (Ollama: "load", "unload",
# or none at all) ended the generation normally.
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})


def finish_reason(done_reason: str | None, called: bool = False) -> str:
    """Return OpenAI's finish_reason for a backend's done_reason."""
    reason = reason_with_calls(done_reason, called)
    return reason if reason in FINISH_REASONS else "stop"


def choice(op: Op, text: str, reason: str | None, *, delta: bool = False) -> dict[str, Any]:
    """Return the one choice of an answer or chunk: a chat message (or delta), or text."""
    if op is Op.CHAT:
        body: dict[str, Any] = {"delta" if delta else "message": (
            {"content": text} if delta else {"role": "assistant", "content": text})}
    else:
        body = {"text": text}
    return {"index": 0, **body, "logprobs": None, "finish_reason": reason}


def usage_body(usage: Usage, final: dict[str, Any]) -> dict[str, Any]:
    """Return the usage object: the counts, and the details an OpenAI-compatible backend
    gave (``prompt_tokens_details.cached_tokens``, ``completion_tokens_details``)."""
    sent = final.get("usage")
    body = usage.to_dict()
    if isinstance(sent, dict):
        body.update((key, value) for key, value in sent.items() if key not in body)
    return body


def completion_body(op: Op, completion: Completion) -> dict[str, Any]:
    """Return a whole chat.completion or text_completion object."""
    calls = completion.tool_calls
    answer = choice(op, completion.text, finish_reason(completion.done_reason, bool(calls)))
    if op is Op.CHAT:
        message = answer["message"]
        if completion.thinking:
            message["reasoning_content"] = completion.thinking
        if calls:
            message["content"] = completion.text or None
            message["tool_calls"] = [openai_call(call) for call in calls]
    if completion.logprobs:
        answer["logprobs"] = {"content": completion.logprobs}
    body = {"id": new_id(ID_PREFIXES[op]), "object": OBJECTS[op],
            "created": int(time.time()), "model": completion.model,
            "choices": [answer], "usage": usage_body(completion.usage, completion.final)}
    if completion.final.get("system_fingerprint"):
        body["system_fingerprint"] = completion.final["system_fingerprint"]
    return body


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """Return a vector as floats, or as base64 of little-endian float32s (the SDK's default)."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embedding_body(embeddings: Embeddings, encoding: str) -> dict[str, Any]:
    """Return the answer of /v1/embeddings."""
    tokens = embeddings.prompt_tokens
    return {"object": "list", "model": embeddings.model,
            "data": [{"object": "embedding", "index": index,
                      "embedding": encode_vector(vector, encoding)}
                     for index, vector in enumerate(embeddings.vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class OpenAIChunks:
    """Encode one stream as OpenAI's SSE chunks (a relay ``Encoder``).

    Chat opens with a chunk carrying the assistant's role; each piece is a
    chunk; the last chunk carries the finish_reason; with ``include_usage`` a
    chunk with empty choices and the usage follows (and every other chunk has
    ``"usage": null``, as OpenAI sends it); ``data: [DONE]`` ends the stream,
    after an error too (as vLLM does).
    """

    ping = PING

    def __init__(self, op: Op, model: str, include_usage: bool) -> None:
        self.op = op
        self.include_usage = include_usage
        self.opened = op is not Op.CHAT
        self.envelope = {"id": new_id(ID_PREFIXES[op]), "object": CHUNK_OBJECTS[op],
                         "created": int(time.time()), "model": model}
        # Per piece, one dumps of the piece between bytes made once per stream.
        usage = b',"usage":null' if include_usage else b""
        opening = b'"delta":{"content":' if op is Op.CHAT else b'"text":'
        self.head = b"data: " + dumps(self.envelope)[:-1] + b',"choices":[{"index":0,' + opening
        self.tail = (b"}" if op is Op.CHAT else b"") + (
            b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n")
        self.calls = CallFragments()

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        """Encode one chunk around ``choices``."""
        if self.include_usage:
            extra.setdefault("usage", None)
        return event({**self.envelope, "choices": choices, **extra})

    def opening(self) -> bytes:
        """Return the chat's role chunk the first time, then nothing."""
        if self.opened:
            return b""
        self.opened = True
        return self.chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}])

    def pieces(self, pieces: list[Piece]) -> bytes:
        """Encode pieces that arrived together as one write of chunks."""
        head, tail = self.head, self.tail
        return self.opening() + b"".join([
            head + dumps(piece) + tail if type(piece) is str else self.delta(piece)  # type: ignore[arg-type]
            for piece in pieces])

    def delta(self, piece: Delta) -> bytes:
        """Encode a piece with more than text: thinking, tool call fragments, logprobs."""
        last = choice(self.op, piece.text, None, delta=True)
        if self.op is Op.CHAT:
            delta = last["delta"]
            if piece.thinking:
                delta["reasoning_content"] = piece.thinking
            if piece.tool_calls:
                delta["content"] = piece.text or None
                delta["tool_calls"] = [self.calls.delta(call) for call in piece.tool_calls]
        if piece.logprobs:
            last["logprobs"] = {"content": list(piece.logprobs)}
        return self.chunk([last])

    def done(self, stream: TokenStream) -> bytes:
        """Encode the finish chunk, the usage chunk if asked for, and [DONE]."""
        called = bool(self.calls.started)
        last = choice(self.op, "", finish_reason(stream.done_reason, called), delta=True)
        if self.op is Op.CHAT:
            last["delta"] = {}
        usage = (self.chunk([], usage=usage_body(stream.usage, stream.final))
                 if self.include_usage else b"")
        return self.opening() + self.chunk([last]) + usage + DONE

    def error(self, error: GatewayError) -> bytes:
        """Encode ``data: {"error": {...}}`` in OpenAI's shape, then [DONE]."""
        return error_event(error)


def error_event(error: GatewayError) -> bytes:
    """Encode a failure after the stream started: ``data: {"error": {...}}``, then [DONE]."""
    return event(errors.body(error)) + DONE


def encoder_for(op: Op, stream: TokenStream, include_usage: bool) -> Encoder:
    """Return the encoder of a stream: the server's own chunks as sent, or the gateway's."""
    if stream.verbatim:
        return Verbatim(PING, DONE, error_event)
    return OpenAIChunks(op, stream.model, include_usage)
