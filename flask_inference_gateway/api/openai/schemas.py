"""Request and response bodies of the OpenAI-compatible routes (/v1/chat/completions, ...).

Loading a request returns the gateway's typed request (``GenerationRequest``
or ``EmbeddingRequest``), with how to answer it (``stream``, usage, encoding).
OpenAI fields the gateway cannot honour (tools, logprobs, n > 1, ...) are
accepted only with their neutral value (``[]``, ``{"type": "text"}``, ``false``, ``0``,
``1``): any other value is refused with a 422 that names the field, rather than
answered as if it had not been sent. ``user`` is accepted and ignored; unknown
fields are refused, as on the gateway's own routes.
"""

from __future__ import annotations

from typing import Any

import orjson
from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from flask_inference_gateway.api.fields import (
    Number,
    describe,
    image_from_url,
    options_from,
    penalty,
    response_format_field,
)
from flask_inference_gateway.core import types
from flask_inference_gateway.core.types import GenerationRequest, Op

ROLES = ("system", "developer", "user", "assistant", "tool")
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
MAX_INPUTS = 2048  # OpenAI's limit of inputs per embeddings request


def same(value: Any, allowed: Any) -> bool:
    """Return whether ``value`` equals ``allowed`` without Python's 0 == False."""
    return value == allowed and isinstance(value, bool) == isinstance(allowed, bool)


def neutral(*values: Any) -> fields.Raw:
    """Return an unsupported OpenAI field, accepted only as null or one of ``values``."""
    accepted = ", ".join(orjson.dumps(v).decode() for v in (None, *values))

    def check(value: Any) -> None:
        if not any(same(value, allowed) for allowed in values):
            raise ValidationError("This gateway does not support it; leave it out or send "
                                  f"one of: {accepted}.")

    return fields.Raw(allow_none=True, validate=check,
                      metadata=describe(f"Not supported: only {accepted} is accepted."))


class Content(fields.Field):
    """Message content: a string, or a list of text and image parts.

    Loads as ``(text, images)``: text parts joined with newlines, ``image_url``
    parts with data: URLs as base64 images (a remote URL is refused: the
    gateway fetches nothing on a client's behalf).
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any,
                     **kwargs: Any) -> tuple[str, tuple[str, ...]]:
        if isinstance(value, str):
            return value, ()
        if not isinstance(value, list) or not value:
            raise ValidationError(PARTS)
        texts, images = [], []
        for index, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                try:
                    images.append(image_from_url(part["image_url"].get("url")))
                except ValidationError as exc:
                    raise ValidationError({index: {"image_url": {"url": exc.messages}}}) from None
            else:
                raise ValidationError({index: [PARTS]})
        return "\n".join(texts), tuple(images)


PARTS = ("Must be a string or a list of {\"type\": \"text\", \"text\": ...} and "
         "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:...\"}} parts; other "
         "parts (audio, files) are not supported.")


class Prompt(fields.Field):
    """A completion prompt: a string, or a list holding one string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str) and value:
            return value
        raise ValidationError("Must be a non-empty string or a list of one; several prompts "
                              "and token ids are not supported.")


class StringList(fields.Field):
    """A string or a list of strings, loaded as a list (stop sequences, embedding inputs)."""

    def __init__(self, most: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.most = most

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if (isinstance(items, list) and 0 < len(items) <= self.most
                and all(isinstance(item, str) and item for item in items)):
            return items
        raise ValidationError(f"Must be a non-empty string or a list of 1 to {self.most} of "
                              "them.")


class StreamOptions(Schema):
    """What a stream carries besides the text."""

    include_usage = fields.Boolean(allow_none=True, metadata=describe(
        "Send a last chunk with the usage (and empty choices) before [DONE]."))


class Message(Schema):
    """One message of a conversation; ``developer`` counts as ``system``."""

    role = fields.String(required=True, validate=validate.OneOf(ROLES),
                         metadata=describe("Who wrote it.", "user"))
    content = Content(required=True, metadata=describe(
        "A string, or a list of text and image_url (data: URL) parts.", "Hello!"))
    name = fields.String(allow_none=True, metadata=describe("Ignored."))

    @post_load
    def to_message(self, data: dict[str, Any], **_kwargs: Any) -> types.Message:
        """Return the gateway's message: role and content."""
        role = "system" if data["role"] == "developer" else data["role"]
        text, images = data["content"]
        return types.Message(role, text, images)


class Sampling(Schema):
    """What both generating routes accept."""

    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=256),
                          metadata=describe("Model to run; default GATEWAY_DEFAULT_MODEL.",
                                            "llama3.2"))
    max_tokens = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1),
                                metadata=describe("Most tokens to generate; at most "
                                                  "GATEWAY_MAX_TOKENS."))
    temperature = Number(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = Number(allow_none=True, validate=validate.Range(min=0, max=1))
    top_k = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1),
                           metadata=describe("vLLM's extension: the k most likely tokens."))
    stop = StringList(16, allow_none=True, metadata=describe("A string or up to 16."))
    seed = fields.Integer(strict=True, allow_none=True)
    stream = fields.Boolean(allow_none=True, metadata=describe("Answer with SSE chunks."))
    stream_options = fields.Nested(StreamOptions, allow_none=True)
    n = fields.Integer(strict=True, allow_none=True, validate=validate.Equal(
        1, error="Only n=1 is supported."))
    user = fields.String(allow_none=True, metadata=describe("Ignored."))
    presence_penalty = penalty("that appeared at all")
    frequency_penalty = penalty("by how often they appeared")
    logit_bias = neutral({})

    def __init__(self, *, max_tokens_limit: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens_limit = max_tokens_limit

    @validates_schema
    def check_limits(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Refuse more tokens than GATEWAY_MAX_TOKENS, and stream_options without stream."""
        for name in ("max_tokens", "max_completion_tokens"):
            if (data.get(name) or 0) > self.max_tokens_limit:
                raise ValidationError(f"Must be at most {self.max_tokens_limit}.", name)
        if data.get("stream_options") and not data.get("stream"):
            raise ValidationError("Only allowed when 'stream' is true.", "stream_options")

    def request(self, op: Op, data: dict[str, Any], default_tokens: int,
                **fields: Any) -> GenerationRequest:
        """Return the gateway's request for ``data``, with ``fields`` (prompt or messages)."""
        tokens = data.get("max_completion_tokens") or data.get("max_tokens") or default_tokens
        options = options_from(data, tokens)
        usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return GenerationRequest(op, options, model=data.get("model") or "",
                                 stream=bool(data.get("stream")), include_usage=usage,
                                 response_format=data.get("response_format"), **fields)


class ChatCompletionRequest(Sampling):
    """Body of POST /v1/chat/completions."""

    messages = fields.List(fields.Nested(Message), required=True,
                           validate=validate.Length(min=1),
                           metadata=describe("The conversation so far, oldest first."))
    max_completion_tokens = fields.Integer(strict=True, allow_none=True,
                                           validate=validate.Range(min=1),
                                           metadata=describe("Wins over max_tokens."))
    logprobs = neutral(False)
    top_logprobs = neutral(0)
    response_format = response_format_field()
    tools = neutral([])
    tool_choice = neutral("none", "auto")
    parallel_tool_calls = neutral(True, False)
    functions = neutral([])
    function_call = neutral("none", "auto")
    store = neutral(False)
    modalities = neutral(["text"])

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> GenerationRequest:
        """Return the gateway's chat request (up to GATEWAY_MAX_TOKENS unless limited)."""
        return self.request(Op.CHAT, data, self.max_tokens_limit,
                            messages=tuple(data["messages"]))


class CompletionRequest(Sampling):
    """Body of POST /v1/completions."""

    prompt = Prompt(required=True, metadata=describe("A string, or a list of one.",
                                                     "Once upon a time"))
    best_of = neutral(1)
    echo = neutral(False)
    logprobs = neutral()
    suffix = neutral()

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> GenerationRequest:
        """Return the gateway's generate request (16 tokens unless told, as OpenAI)."""
        default = min(COMPLETIONS_MAX_TOKENS, self.max_tokens_limit)
        return self.request(Op.GENERATE, data, default, prompt=data["prompt"])


class EmbeddingRequest(Schema):
    """Body of POST /v1/embeddings."""

    model = fields.String(allow_none=True, validate=validate.Length(min=1, max=256),
                          metadata=describe("Model to run; default GATEWAY_DEFAULT_MODEL."))
    input = StringList(MAX_INPUTS, required=True, metadata=describe(
        "A string or a list of strings; token ids are not supported.", "Hello"))
    encoding_format = fields.String(allow_none=True,
                                    validate=validate.OneOf(("float", "base64")),
                                    metadata=describe("float, or base64 of float32s."))
    dimensions = neutral()
    user = fields.String(allow_none=True, metadata=describe("Ignored."))

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> types.EmbeddingRequest:
        """Return the gateway's embedding request."""
        return types.EmbeddingRequest(tuple(data["input"]), model=data.get("model") or "",
                                encoding=data.get("encoding_format") or "float")


# Answers, for the Swagger spec only: the views build them directly (wire.py).

class OpenAIUsage(Schema):
    """Token counts."""

    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer(required=True)


class OpenAIChoice(Schema):
    """One choice: a chat message (or delta), or a completion's text."""

    index = fields.Integer(required=True)
    message = fields.Dict(metadata=describe("chat.completion: role and content."))
    delta = fields.Dict(metadata=describe("chat.completion.chunk: role, then content."))
    text = fields.String(metadata=describe("text_completion: the text."))
    logprobs = fields.Raw(allow_none=True, metadata=describe("Always null."))
    finish_reason = fields.String(allow_none=True, metadata=describe("stop or length.",
                                                                     "stop"))


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
