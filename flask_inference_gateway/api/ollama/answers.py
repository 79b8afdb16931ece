"""Answers of the Ollama-compatible API, for the Swagger spec only: the views build
them directly (wire.py)."""

from __future__ import annotations

from marshmallow import Schema, fields

from flask_inference_gateway.api.fields import describe


class OllamaFinal(Schema):
    """Fields of the last line (or the whole answer) of a generation."""

    model = fields.String(required=True)
    created_at = fields.String(required=True, metadata=describe("RFC 3339 time."))
    done = fields.Boolean(required=True)
    done_reason = fields.String(metadata=describe("stop, length; load when only loading."))
    total_duration = fields.Integer(metadata=describe(
        "Nanoseconds: an Ollama backend's own, else measured by the gateway."))
    load_duration = fields.Integer(metadata=describe("An Ollama backend's own, else 0."))
    prompt_eval_count = fields.Integer()
    prompt_eval_duration = fields.Integer(metadata=describe("Nanoseconds to the first token."))
    eval_count = fields.Integer()
    eval_duration = fields.Integer(metadata=describe("Nanoseconds from the first token."))
    logprobs = fields.List(fields.Dict(), metadata=describe(
        "When asked for: each token's token, logprob, bytes and top_logprobs."))


class OllamaGenerateResponse(OllamaFinal):
    """One NDJSON line of /api/generate, or its whole answer."""

    response = fields.String(required=True)
    thinking = fields.String(metadata=describe("The model's thinking, when asked to think."))
    context = fields.List(fields.Integer(), metadata=describe(
        "An Ollama backend's context tokens, on the last line."))


class OllamaChatResponse(OllamaFinal):
    """One NDJSON line of /api/chat, or its whole answer."""

    message = fields.Dict(required=True, metadata=describe(
        "The assistant's message (or its next piece): role, content, and thinking and "
        "tool_calls when there are.", {"role": "assistant", "content": "Hi"}))


class OllamaEmbedResponse(Schema):
    """Answer of POST /api/embed."""

    model = fields.String(required=True)
    embeddings = fields.List(fields.List(fields.Float()), required=True)
    total_duration = fields.Integer()
    load_duration = fields.Integer()
    prompt_eval_count = fields.Integer()


class OllamaModel(Schema):
    """One entry of /api/tags or /api/ps."""

    name = fields.String(required=True)
    model = fields.String(required=True)
    modified_at = fields.String()
    size = fields.Integer()
    digest = fields.String()
    details = fields.Dict()
    expires_at = fields.String(metadata=describe("/api/ps only."))
    size_vram = fields.Integer(metadata=describe("/api/ps only."))


class OllamaModels(Schema):
    """Answer of GET /api/tags and /api/ps."""

    models = fields.List(fields.Nested(OllamaModel), required=True)


class OllamaVersion(Schema):
    """Answer of GET /api/version."""

    version = fields.String(required=True, metadata=describe("An Ollama backend's version."))


class OllamaStatus(Schema):
    """A progress line of pull, push or create, or their whole answer."""

    status = fields.String(required=True, metadata=describe("Progress, then 'success'."))
    digest = fields.String()
    total = fields.Integer()
    completed = fields.Integer()


class OllamaError(Schema):
    """Every error of the Ollama-compatible API (and a failure mid-stream, as a line)."""

    error = fields.String(required=True, metadata=describe("What went wrong."))
