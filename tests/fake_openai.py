"""Fake OpenAI-compatible server (as vLLM serves it), built on the fake Ollama's machinery.

The same ``[[sim:...]]`` fault directives apply. ``/v1/models``,
``/v1/completions`` and ``/v1/chat/completions`` speak OpenAI's wire format:
whole JSON bodies, or SSE chunks ending with ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fake_ollama import (
    MODEL_ERROR_MSG,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    BadRequest,
    FakeOllama,
    Job,
    _Handler,
    dumps,
    embed_inputs,
    logprob,
    vector,
)

PATHS = {"/v1/completions": "generate", "/v1/chat/completions": "chat"}
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "server_error"}


def usage(job: Job) -> dict[str, int]:
    """Return the OpenAI usage object of a job."""
    return {"prompt_tokens": job.prompt_words, "completion_tokens": len(job.pieces),
            "total_tokens": job.prompt_words + len(job.pieces)}


def choice(job: Job, text: str, finish: str | None, *, delta: bool,
           **message: Any) -> dict[str, Any]:
    """Return one choice: a chat message (or delta) or a completion's text."""
    if job.kind == "chat":
        key = "delta" if delta else "message"
        body = {"index": 0, key: {"role": "assistant", "content": text, **message},
                "finish_reason": finish}
    else:
        body = {"index": 0, "text": text, "finish_reason": finish}
    if job.logprobs and text:
        body["logprobs"] = {"content": [logprob(text)]}
    return body


def finish_of(job: Job) -> str:
    """Return the finish_reason: tool_calls when the job calls a tool."""
    return "tool_calls" if job.tool else job.done_reason


# A call's arguments arrive in fragments, as vLLM and llama.cpp stream them.
ARGUMENT_FRAGMENTS = ['{"city":', ' "Par', 'is"}']
assert "".join(ARGUMENT_FRAGMENTS) == json.dumps(TOOL_ARGUMENTS)


def envelope(job: Job, choices: list[dict[str, Any]], *, chunk: bool) -> dict[str, Any]:
    """Return a response or chunk object around ``choices``."""
    kind = "chat.completion" if job.kind == "chat" else "text_completion"
    return {"id": "cmpl-fake", "object": kind + (".chunk" if chunk and job.kind == "chat"
                                                 else ""),
            "created": int(time.time()), "model": job.model, "choices": choices}


def event(obj: Any) -> bytes:
    """Encode one SSE data event."""
    return b"data: " + (obj if isinstance(obj, bytes) else dumps(obj)) + b"\n\n"


class _OpenAIHandler(_Handler):
    """Serve OpenAI's routes and wire format."""

    stream_type = "text/event-stream"

    def do_GET(self) -> None:  # noqa: N802
        """Serve the model list and the fake's stats."""
        path = self.path.split("?", 1)[0]
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "vllm"}
                for m in self.fake.models]})
        elif path == "/_fake/stats":
            self._send_json(200, self.fake.stats)
        else:
            self._send_error(404, "Not Found")

    def do_POST(self) -> None:  # noqa: N802
        """Serve completions and chat completions."""
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if path == "/v1/embeddings":
            self._embed_openai(raw)
        elif path in PATHS:
            self.include_usage = b'"include_usage":true' in raw.replace(b" ", b"")
            self._inference(path, PATHS[path], raw)
        else:
            self._send_error(404, "Not Found")

    def _embed_openai(self, raw: bytes) -> None:
        """Answer /v1/embeddings in OpenAI's shape."""
        try:
            body = json.loads(raw)
            inputs, model = embed_inputs(self.fake, body)
        except (ValueError, BadRequest) as exc:
            self._send_error(getattr(exc, "status", 400), getattr(exc, "message", str(exc)))
            return
        self.fake.record("/v1/embeddings", body, self.headers.get("X-Request-ID"))
        tokens = sum(len(t.split()) for t in inputs)
        self._send_json(200, {"object": "list", "model": model, "data": [
            {"object": "embedding", "index": i, "embedding": vector(t)}
            for i, t in enumerate(inputs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _inference(self, path: str, kind: str, raw: bytes) -> None:
        """Map OpenAI's body onto the Ollama fake's job (options, stream default)."""
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_error(400, "invalid JSON")
            return
        if isinstance(body, dict):
            body["stream"] = body.get("stream") is True
            body["options"] = {"num_predict": body.get("max_tokens"), "stop": body.get("stop")}
            raw = dumps(body)
        super()._inference(path, kind, raw)

    def _send_error(self, status: int, message: str) -> None:
        """Send an OpenAI-style error."""
        self._send_json(status, {"error": {"message": message,
                                           "type": ERROR_TYPES.get(status, "server_error"),
                                           "param": None, "code": status}})

    def _whole_body(self, job: Job) -> bytes:
        extra: dict[str, Any] = {}
        if job.thoughts:
            extra["reasoning_content"] = "".join(job.thoughts)
        if job.tool:
            extra["tool_calls"] = [{"id": TOOL_CALL_ID, "type": "function", "function": {
                "name": job.tool, "arguments": json.dumps(TOOL_ARGUMENTS)}}]
        answer = choice(job, "".join(job.pieces), finish_of(job), delta=False, **extra)
        if job.logprobs:
            answer["logprobs"] = {"content": [logprob(p) for p in job.pieces]}
        return dumps({**envelope(job, [answer], chunk=False), "usage": usage(job)})

    def _piece_bytes(self, job: Job, piece: str) -> bytes:
        return event(envelope(job, [choice(job, piece, None, delta=True)], chunk=True))

    def _delta_bytes(self, job: Job, **delta: Any) -> bytes:
        return event(envelope(job, [{"index": 0, "delta": delta, "finish_reason": None}],
                              chunk=True))

    def _extra_bytes(self, job: Job, before: bool) -> bytes:
        if before:
            return b"".join(self._delta_bytes(job, reasoning_content=t) for t in job.thoughts)
        if not job.tool or job.kind != "chat":
            return b""
        first = {"index": 0, "id": TOOL_CALL_ID, "type": "function",
                 "function": {"name": job.tool, "arguments": ""}}
        later = [{"index": 0, "function": {"arguments": a}} for a in ARGUMENT_FRAGMENTS]
        return b"".join(self._delta_bytes(job, tool_calls=[call]) for call in [first, *later])

    def _final_bytes(self, job: Job) -> bytes:
        last = event(envelope(job, [choice(job, "", finish_of(job), delta=True)], chunk=True))
        if self.include_usage:
            last += event({**envelope(job, [], chunk=True), "usage": usage(job)})
        return last + event(b"[DONE]")

    def _error_bytes(self) -> bytes:
        return event({"error": {"message": MODEL_ERROR_MSG, "type": "server_error",
                                "code": 500}})


class FakeOpenAI(FakeOllama):
    """Serve a fake OpenAI-compatible API (vLLM-like) in a background thread."""

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        """Return the handler speaking OpenAI's wire format."""
        return _OpenAIHandler
