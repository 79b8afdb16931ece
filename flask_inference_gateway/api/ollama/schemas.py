"""Request bodies of the Ollama-compatible API (/api/*), in Ollama's names (answers.py: answers).

Fields and options the gateway knows (``format``, ``images``, ``tools``,
``think``, ``logprobs``, the ten sampling options, ...) are validated and
translated for either backend kind; ``keep_alive`` (a memory hint) goes to
Ollama backends only. Fields and options it does not know (``raw``,
``template``, ``context``, ``suffix``, ``min_p``, ``mirostat``, a newer
Ollama's own) pass, as they are, to Ollama backends; an OpenAI-compatible
backend cannot take them, and a 400 names them. ``truncate`` is accepted and
ignored.
"""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from flask_inference_gateway.api.fields import (
    ROLES,
    Flag,
    Number,
    describe,
    images_field,
    options_from,
    penalty,
)
from flask_inference_gateway.api.tools import (
    call_id_field,
    logprobs_fields,
    numbered,
    object_calls_field,
    think_field,
    tool_name_field,
    tools_field,
)
from flask_inference_gateway.core.types import (
    EmbeddingRequest,
    Extra,
    GenerationRequest,
    Message,
    Op,
    ResponseFormat,
)

NOT_SUPPORTED = "Not supported by this gateway; leave it out."
OPTIONS = ("num_predict", "temperature", "top_p", "top_k", "stop", "seed", "presence_penalty",
           "frequency_penalty", "repeat_penalty", "num_ctx")


def unsupported(what: str) -> fields.Raw:
    """Return a field that is accepted only with a neutral (falsy) value."""

    def check(value: Any) -> None:
        if value:
            raise ValidationError(NOT_SUPPORTED)

    return fields.Raw(allow_none=True, validate=check,
                      metadata=describe(f"{what}: not supported, only a neutral value."))


def check_num_predict(value: int) -> None:
    """Refuse a num_predict that is neither positive nor Ollama's -1 / -2 (no limit)."""
    if value < 1 and value not in (-1, -2):
        raise ValidationError("Must be at least 1, or -1 for no limit.")


class OllamaOptions(Schema):
    """The sampling options the gateway translates (Ollama's ``options``); others are kept
    for Ollama backends."""

    class Meta:
        unknown = INCLUDE

    num_predict = fields.Integer(strict=True, validate=check_num_predict, metadata=describe(
        "Most tokens to generate (-1: up to GATEWAY_MAX_TOKENS).", 128))
    temperature = Number(validate=validate.Range(min=0, max=2))
    top_p = Number(validate=validate.Range(min=0, max=1))
    top_k = fields.Integer(strict=True, validate=validate.Range(min=1))
    stop = fields.List(fields.String(validate=validate.Length(min=1)),
                       validate=validate.Length(max=16))
    seed = fields.Integer(strict=True)
    presence_penalty = penalty("that appeared at all")
    frequency_penalty = penalty("by how often they appeared")
    repeat_penalty = Number(allow_none=True, validate=validate.Range(min=0), metadata=describe(
        "Penalise repetition (1: none); Ollama backends only."))
    num_ctx = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1),
                             metadata=describe("Context window in tokens; Ollama backends only."))


class Format(fields.Field):
    """Ollama's ``format``: "json", a JSON Schema, or nothing ("" or null)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any,
                     **kwargs: Any) -> ResponseFormat | None:
        if value in ("", None):
            return None
        if value == "json":
            return ResponseFormat()
        if isinstance(value, dict) and value and isinstance(value.get("type", ""), (str, list)):
            return ResponseFormat(value)
        raise ValidationError('Must be "json" or a JSON Schema object.')


class OllamaRequest(Schema):
    """What /api/generate and /api/chat share; unknown fields are kept for Ollama backends."""

    class Meta:
        unknown = INCLUDE

    model = fields.String(validate=validate.Length(min=1, max=256), metadata=describe(
        "Model to run; default GATEWAY_DEFAULT_MODEL.", "llama3.2"))
    stream = Flag(load_default=True, metadata=describe(
        "Stream NDJSON lines (the default), or answer with one JSON object."))
    options = fields.Nested(OllamaOptions, allow_none=True)
    keep_alive = fields.Raw(allow_none=True, metadata=describe(
        "How long the backend keeps the model in memory (\"5m\", 0 to unload); "
        "forwarded to Ollama backends."))
    format = Format(allow_none=True, metadata=describe(
        'Structured output: "json", or a JSON Schema the answer must match.'))
    op = Op.GENERATE  # what a loaded body asks for

    def __init__(self, *, max_tokens_limit: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens_limit = max_tokens_limit

    def max_tokens(self, options: dict[str, Any]) -> int:
        """Return the gateway's max_tokens for num_predict (absent or -1: the limit)."""
        wanted = options.get("num_predict")
        if wanted is None or wanted < 0:  # Ollama: -1 no limit, -2 fill the context
            return self.max_tokens_limit
        if wanted > self.max_tokens_limit:
            raise ValidationError({"options": {"num_predict": [
                f"Must be at most {self.max_tokens_limit} (GATEWAY_MAX_TOKENS)."]}})
        return wanted

    think = think_field()
    logprobs, top_logprobs = logprobs_fields()

    def extra(self, data: dict[str, Any], options: dict[str, Any]) -> Extra | None:
        """Return the fields and options the schema does not know, for Ollama backends."""
        unknown = tuple((k, v) for k, v in data.items() if k not in self.fields)
        unknown_options = tuple((k, v) for k, v in options.items() if k not in OPTIONS)
        return Extra("ollama", unknown, unknown_options) if unknown or unknown_options else None

    def declared(self, data: dict[str, Any], name: str) -> Any:
        """Return a field this route declares (and so validated); another route's is None."""
        # The other route's fields (a prompt sent to /api/chat) are unknown
        # here: unvalidated, they travel only in extra, as Ollama ignores them.
        return data.get(name) if name in self.fields else None

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> GenerationRequest:
        """Return the loaded body as the gateway's request."""
        options = data.get("options") or {}
        sampling = options_from(options, self.max_tokens(options))
        return GenerationRequest(self.op, sampling, model=data.get("model") or "",
                                 prompt=self.declared(data, "prompt") or "",
                                 system=self.declared(data, "system"),
                                 messages=tuple(self.declared(data, "messages") or ()),
                                 stream=data["stream"], response_format=data.get("format"),
                                 images=tuple(self.declared(data, "images") or ()),
                                 keep_alive=data.get("keep_alive"),
                                 tools=tuple(self.declared(data, "tools") or ()),
                                 think=data.get("think"), logprobs=bool(data.get("logprobs")),
                                 top_logprobs=data.get("top_logprobs"),
                                 extra=self.extra(data, options))


class OllamaGenerateRequest(OllamaRequest):
    """Body of POST /api/generate."""

    prompt = fields.String(load_default="", metadata=describe(
        "The text to continue; empty: only load the model.", "Why is the sky blue?"))
    system = fields.String(allow_none=True, metadata=describe("System prompt."))
    images = images_field("Images")


class OllamaMessage(Schema):
    """One message of an Ollama conversation."""

    role = fields.String(required=True, validate=validate.OneOf(ROLES),
                         metadata=describe("Who wrote it.", "user"))
    content = fields.String(load_default="", metadata=describe("The message text.", "Hello!"))
    images = images_field("Images")
    tool_calls = object_calls_field()
    tool_name = tool_name_field()
    tool_call_id = call_id_field()
    thinking = fields.String(allow_none=True, metadata=describe(
        "An assistant's earlier thinking."))

    @post_load
    def to_message(self, data: dict[str, Any], **_kwargs: Any) -> Message:
        """Return the gateway's message."""
        return Message(data["role"], data["content"], tuple(data.get("images") or ()),
                       numbered(data.get("tool_calls")), data.get("tool_call_id") or "",
                       data.get("tool_name") or "", data.get("thinking") or "")


class OllamaChatRequest(OllamaRequest):
    """Body of POST /api/chat."""

    op = Op.CHAT
    messages = fields.List(fields.Nested(OllamaMessage), load_default=list, metadata=describe(
        "The conversation so far, oldest first; empty: only load the model."))
    tools = tools_field()


class TextOrList(fields.Field):
    """A string or a non-empty list of strings, loaded as a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise ValidationError("Must be a string or a non-empty list of strings.")


class OllamaEmbedRequest(Schema):
    """Body of POST /api/embed."""

    model = fields.String(validate=validate.Length(min=1, max=256), metadata=describe(
        "Embedding model; default GATEWAY_DEFAULT_MODEL.", "all-minilm"))
    input = TextOrList(required=True, metadata=describe("Text or texts to embed."))
    truncate = Flag(allow_none=True, metadata=describe("Accepted and ignored."))
    keep_alive = fields.Raw(allow_none=True, metadata=describe("Accepted and ignored."))
    options = unsupported("Options")
    dimensions = unsupported("Dimensions")

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> EmbeddingRequest:
        """Return the loaded body as the gateway's request."""
        return EmbeddingRequest(tuple(data["input"]), model=data.get("model") or "")


class OllamaModelRequest(Schema):
    """Body of /api/show, /api/pull, /api/push, /api/delete and /api/create: passed on as is."""

    class Meta:
        unknown = INCLUDE  # the backend validates what it is given

    model = fields.String(validate=validate.Length(min=1), metadata=describe(
        "The model.", "llama3.2"))
    name = fields.String(validate=validate.Length(min=1), metadata=describe(
        "The model (Ollama's older name for 'model')."))
    stream = Flag(allow_none=True, metadata=describe(
        "pull, push, create: stream progress lines (the default)."))

    @validates_schema
    def require_model(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Refuse a body that names no model."""
        if not data.get("model") and not data.get("name"):
            raise ValidationError("Missing data for required field.", "model")


class OllamaCopyRequest(Schema):
    """Body of POST /api/copy."""

    source = fields.String(required=True, validate=validate.Length(min=1))
    destination = fields.String(required=True, validate=validate.Length(min=1))
