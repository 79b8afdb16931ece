"""Ollama's wire format: whole answers and NDJSON streams (the schemas load its requests).

Durations are the gateway's own measurements, in nanoseconds: ``total_duration``
the whole request, ``prompt_eval_duration`` up to the first token and
``eval_duration`` after it (a whole answer counts all of it as eval);
``load_duration`` is always 0 and ``context`` is never returned.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson

from flask_inference_gateway.api.ollama import errors
from flask_inference_gateway.core.errors import GatewayError
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


def text_field(op: Op, text: str) -> dict[str, Any]:
    """Return the field that carries generated text: ``response``, or chat's ``message``."""
    if op is Op.CHAT:
        return {"message": {"role": "assistant", "content": text}}
    return {"response": text}


def final_fields(done_reason: str | None, usage: Usage, total: float,
                 to_first: float) -> dict[str, Any]:
    """Return what the last line (or a whole answer) adds: how it ended, counts, durations."""
    return {"done": True, "done_reason": done_reason or "stop",
            "total_duration": nanoseconds(total), "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": nanoseconds(to_first),
            "eval_count": usage.completion_tokens,
            "eval_duration": nanoseconds(total - to_first)}


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
    return {"model": completion.model, "created_at": now_rfc3339(),
            **text_field(op, completion.text),
            **final_fields(completion.done_reason, completion.usage,
                           time.monotonic() - started, 0.0)}


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

    def pieces(self, pieces: list[str]) -> bytes:
        """Encode pieces that arrived together as one write of lines."""
        head = self._head + dumps(now_rfc3339()) + self._open
        tail = self._close + b'"done":false}\n'
        return b"".join([head + dumps(piece) + tail for piece in pieces])

    def done(self, stream: TokenStream) -> bytes:
        """Encode the last line: how the stream ended, its counts and durations."""
        now = time.monotonic()
        first = stream.first_piece_at or now
        line = {"model": self.model, "created_at": now_rfc3339(), **text_field(self.op, ""),
                **final_fields(stream.done_reason, stream.usage, now - self.started,
                               first - self.started)}
        return dumps(line) + b"\n"

    def error(self, error: GatewayError) -> bytes:
        """Encode a failure mid-stream."""
        return error_line(error)
