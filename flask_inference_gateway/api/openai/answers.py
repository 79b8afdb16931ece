"""Answers of the OpenAI-compatible routes, for the Swagger spec only: the views build
them directly (wire.py)."""

from __future__ import annotations

from marshmallow import Schema, fields

from flask_inference_gateway.api.fields import describe


class OpenAIUsage(Schema):
    """Token counts."""

    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer(required=True)


class OpenAIChoice(Schema):
    """One choice: a chat message (or delta), or a completion's text."""

    index = fields.Integer(required=True)
    message = fields.Dict(metadata=describe(
        "chat.completion: role, content, and reasoning_content and tool_calls when there are."))
    delta = fields.Dict(metadata=describe(
        "chat.completion.chunk: role, then content, reasoning_content or tool_calls pieces."))
    text = fields.String(metadata=describe("text_completion: the text."))
    logprobs = fields.Raw(allow_none=True, metadata=describe(
        "{\"content\": [{token, logprob, bytes, top_logprobs}]} when asked for, else null."))
    finish_reason = fields.String(allow_none=True, metadata=describe(
        "stop, length or tool_calls.", "stop"))


class OpenAICompletion(Schema):
    """A chat.completion or text_completion object, or one chunk of a stream."""

    id = fields.String(required=True)
    object = fields.String(required=True, metadata=describe(
        "chat.completion, chat.completion.chunk or text_completion."))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(OpenAIChoice), required=True)
    usage = fields.Nested(OpenAIUsage, allow_none=True)


class OpenAIEmbedding(Schema):
    """One input's vector."""

    object = fields.String(required=True, metadata=describe("embedding"))
    index = fields.Integer(required=True)
    embedding = fields.Raw(required=True, metadata=describe(
        "A list of floats, or base64 of little-endian float32s."))


class OpenAIEmbeddingList(Schema):
    """Answer of POST /v1/embeddings."""

    object = fields.String(required=True, metadata=describe("list"))
    data = fields.List(fields.Nested(OpenAIEmbedding), required=True)
    model = fields.String(required=True)
    usage = fields.Nested(OpenAIUsage, required=True)


class OpenAIErrorDetail(Schema):
    """What went wrong, as OpenAI says it."""

    message = fields.String(required=True)
    type = fields.String(required=True, metadata=describe(
        "invalid_request_error, authentication_error, permission_error, not_found_error, "
        "rate_limit_error or server_error.", "invalid_request_error"))
    param = fields.String(allow_none=True, metadata=describe("The invalid field, if one is."))
    code = fields.String(required=True, metadata=describe("The gateway's error type.",
                                                          "model_not_found"))


class OpenAIErrorResponse(Schema):
    """Every error of the OpenAI-compatible routes."""

    error = fields.Nested(OpenAIErrorDetail, required=True)
