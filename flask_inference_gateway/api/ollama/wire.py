"""Ollama's wire format: whole answers and NDJSON streams (the schemas load its requests).

An Ollama backend's own last object is passed on (its durations, ``context``
and any field a newer Ollama adds). Behind an OpenAI-compatible backend the
durations are the gateway's own measurements, in nanoseconds:
``total_duration`` the whole request, ``prompt_eval_duration`` up to the first
token and ``eval_duration`` after it (a whole answer counts all of it as eval);
``load_duration`` is then 0. Tool calls come whole, each call's arguments an
object, in a line before the last.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson

from flask_inference_gateway.api.calls import ollama_call
from flask_inference_gateway.api.ollama import errors
from flask_inference_gateway.api.relay import Encoder, Verbatim
from flask_inference_gateway.core.errors import GatewayError
from flask_inference_gateway.core.pieces import Answer, Delta, Piece, ToolCall
from flask_inference_gateway.core.types import Completion, Embeddings, Op, Usage
from flask_inference_gateway.upstream.stream import TokenStream

NDJSON = "application/x-ndjson"
dumps = orjson.dumps


def now_rfc3339() -> str:
    """Return the current UTC time as Ollama writes it (RFC 3339, Z)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    """Return a duration in Ollama's unit."""
    return max(0, int(seconds * 1e9))


def text_field(op: Op, text: str, thinking: str = "",
               calls: tuple[ToolCall, ...] = ()) -> dict[str, Any]:
    """Return the fields that carry generated text (``response``, or chat's ``message``),
    thinking and tool calls."""
    if op is Op.GENERATE:
        return {"response": text, "thinking": thinking} if thinking else {"response": text}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = [ollama_call(call) for call in calls]
    return {"message": message}


# The backend's last object, less what the gateway writes itself.
OWN_FIELDS = frozenset({"model", "created_at", "message", "response", "thinking", "done"})


def final_fields(done_reason: str | None, usage: Usage, total: float,
                 to_first: float, final: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return what the last line (or a whole answer) adds: how it ended, counts, durations
    (those of an Ollama backend's last object when there is one)."""
    passed = {key: value for key, value in (final or {}).items() if key not in OWN_FIELDS}
    if done_reason == "tool_calls":  # Ollama ends a turn of tool calls with "stop"
        done_reason = "stop"
    return {"done": True, "done_reason": done_reason or "stop",
            "total_duration": nanoseconds(total), "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": nanoseconds(to_first),
            "eval_count": usage.completion_tokens,
            "eval_duration": nanoseconds(total - to_first), **passed}


def unloads(keep_alive: Any) -> bool:
    """Return whether ``keep_alive`` asks Ollama to unload the model now."""
    return keep_alive in (0, "0", "0s", "0m")


def loaded_answer(op: Op, model: str, keep_alive: Any) -> dict[str, Any]:
    """Return Ollama's answer to a request that only loads (or, keep_alive 0, unloads)."""
    reason = "unload" if unloads(keep_alive) else "load"
    return {"model": model, "created_at": now_rfc3339(), **text_field(op, ""),
            "done": True, "done_reason": reason}


def whole_answer(op: Op, completion: Completion, started: float) -> dict[str, Any]:
    """Return a finished completion as Ollama's non-streamed answer."""
    body = {"model": completion.model, "created_at": now_rfc3339(),
            **text_field(op, completion.text, completion.thinking, completion.tool_calls),
            **final_fields(completion.done_reason, completion.usage,
                           time.monotonic() - started, 0.0, completion.final)}
    if completion.logprobs:
        body["logprobs"] = completion.logprobs
    return body


def embed_answer(embeddings: Embeddings, started: float) -> dict[str, Any]:
    """Return embeddings as Ollama's /api/embed answer."""
    return {"model": embeddings.model, "embeddings": embeddings.vectors,
            "total_duration": nanoseconds(time.monotonic() - started), "load_duration": 0,
            "prompt_eval_count": embeddings.prompt_tokens}


def error_line(error: GatewayError) -> bytes:
    """Encode a failure after the stream started as Ollama does: an ``{"error"}`` line."""
    return dumps(errors.body(error)) + b"\n"


class OllamaLines:
    """Encode one stream as Ollama's NDJSON lines (a relay ``Encoder``)."""

    def __init__(self, op: Op, model: str, started: float) -> None:
        self.op, self.model, self.started = op, model, started
        self._head = b'{"model":' + dumps(model) + b',"created_at":'
        # Between the piece and the end of its line: chat nests it in a message.
        self._open, self._close = ((b',"message":{"role":"assistant","content":', b'},')
                                   if op is Op.CHAT else (b',"response":', b","))
        # Silence is an empty piece: Ollama's clients have no comment line, and an
        # empty line would break their JSON parsing; a write still finds a gone client.
        self.ping = self.pieces([""])
        self.calls = Answer()  # tool call fragments, sent whole before the last line

    def pieces(self, pieces: list[Piece]) -> bytes:
        """Encode pieces that arrived together as one write of lines."""
        head = self._head + dumps(now_rfc3339()) + self._open
        tail = self._close + b'"done":false}\n'
        return b"".join([head + dumps(piece) + tail if type(piece) is str
                         else self.delta(piece) for piece in pieces])  # type: ignore[arg-type]

    def line(self, fields: dict[str, Any]) -> bytes:
        """Encode one line of this stream."""
        return dumps({"model": self.model, "created_at": now_rfc3339(), **fields}) + b"\n"

    def delta(self, piece: Delta) -> bytes:
        """Encode a piece with thinking or logprobs; keep its tool call fragments."""
        for call in piece.tool_calls:
            self.calls.add_call(call)
        if not (piece.text or piece.thinking or piece.logprobs):
            return b""
        fields = text_field(self.op, piece.text, piece.thinking)
        if piece.logprobs:
            fields["logprobs"] = list(piece.logprobs)
        return self.line({**fields, "done": False})

    def done(self, stream: TokenStream) -> bytes:
        """Encode the tool calls, then the last line: how it ended, its counts, durations."""
        now = time.monotonic()
        first = stream.first_piece_at or now
        calls = self.calls.tool_calls
        head = self.line({**text_field(self.op, "", calls=calls), "done": False}) if calls else b""
        return head + self.line({**text_field(self.op, ""),
                                 **final_fields(stream.done_reason, stream.usage,
                                                now - self.started, first - self.started,
                                                stream.final)})

    def error(self, error: GatewayError) -> bytes:
        """Encode a failure mid-stream."""
        return error_line(error)


def encoder_for(op: Op, stream: TokenStream, started: float) -> Encoder:
    """Return the encoder of a stream: Ollama's own lines as sent, or the gateway's."""
    lines = OllamaLines(op, stream.model, started)
    return Verbatim(lines.ping, b"", error_line) if stream.verbatim else lines
