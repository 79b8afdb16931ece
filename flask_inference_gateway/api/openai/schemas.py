"""Request and response bodies of the OpenAI-compatible routes (/v1/chat/completions, ...).

Loading a request returns the gateway's typed request (``GenerationRequest``
or ``EmbeddingRequest``), with how to answer it (``stream``, usage, encoding).
Fields the gateway knows are validated and translated for either backend kind.
Fields it does not know pass, as they are, to OpenAI-compatible backends (a
newer vLLM's options, ``chat_template_kwargs``, ...); an Ollama backend cannot
take them, and a 422 names them. Fields that would break the gateway's one
generation per request (``n`` > 1, ``best_of``, beam search) are refused, as are
the legacy ``functions``; ``user`` is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import orjson
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
    Flag,
    Number,
    describe,
    options_from,
    penalty,
    response_format_field,
)
from flask_inference_gateway.api.openai.messages import Message, Prompt, StringList
from flask_inference_gateway.api.tools import (
    ToolChoiceField,
    check_choice,
    logprobs_fields,
    tools_field,
)
from flask_inference_gateway.core import types
from flask_inference_gateway.core.types import Extra, GenerationRequest, Op

# Unknown to the gateway's schema, yet not harmless: each runs several generations.
# Each with the values that run one generation (True is no 1 here: same()).
SEVERAL = {"best_of": (None, 1), "use_beam_search": (None, False)}
# reasoning_effort as Ollama's think takes it (it knows no "minimal").
EFFORTS = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
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


class StreamOptions(Schema):
    """What a stream carries besides the text."""

    include_usage = Flag(allow_none=True, metadata=describe(
        "Send a last chunk with the usage (and empty choices) before [DONE]."))


class Sampling(Schema):
    """What both generating routes accept; unknown fields are kept for OpenAI backends."""

    class Meta:
        unknown = INCLUDE

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
    stream = Flag(allow_none=True, metadata=describe("Answer with SSE chunks."))
    stream_options = fields.Nested(StreamOptions, allow_none=True)
    n = fields.Integer(strict=True, allow_none=True, validate=validate.Equal(1, error=(
        "Only n=1: the gateway relays one choice per request and charges it as one; send "
        "n requests (with different seeds) instead.")))
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
        for name, single in SEVERAL.items():
            if not any(same(data.get(name), value) for value in single):
                raise ValidationError("Not supported: it runs several generations for one "
                                      "request; send several requests instead.", name)

    def extra(self, data: dict[str, Any]) -> Extra | None:
        """Return the fields the schema does not know, for OpenAI-compatible backends."""
        unknown = tuple((key, value) for key, value in data.items()
                        if key not in self.fields and key not in SEVERAL)
        return Extra("openai", unknown) if unknown else None

    def request(self, op: Op, data: dict[str, Any], default_tokens: int,
                **fields: Any) -> GenerationRequest:
        """Return the gateway's request for ``data``, with ``fields`` (prompt or messages)."""
        tokens = data.get("max_completion_tokens") or data.get("max_tokens") or default_tokens
        options = options_from(data, tokens)
        usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return GenerationRequest(op, options, model=data.get("model") or "",
                                 stream=bool(data.get("stream")), include_usage=usage,
                                 response_format=data.get("response_format"),
                                 extra=self.extra(data), **fields)


class ChatCompletionRequest(Sampling):
    """Body of POST /v1/chat/completions."""

    messages = fields.List(fields.Nested(Message), required=True,
                           validate=validate.Length(min=1),
                           metadata=describe("The conversation so far, oldest first."))
    max_completion_tokens = fields.Integer(strict=True, allow_none=True,
                                           validate=validate.Range(min=1),
                                           metadata=describe("Wins over max_tokens."))
    logprobs, top_logprobs = logprobs_fields()
    response_format = response_format_field()
    tools = tools_field()
    tool_choice = ToolChoiceField(allow_none=True, metadata=describe(
        "none, auto, required, or {\"type\": \"function\", \"function\": {\"name\"}}; "
        "Ollama backends take only none and auto."))
    parallel_tool_calls = Flag(allow_none=True, metadata=describe(
        "false: at most one tool call (OpenAI-compatible backends only)."))
    reasoning_effort = fields.String(allow_none=True, validate=validate.OneOf(tuple(EFFORTS)),
                                     metadata=describe("How hard to think; Ollama backends "
                                                       "get it as think.", "low"))
    functions = neutral([])
    function_call = neutral("none", "auto")
    store = neutral(False)
    modalities = neutral(["text"])

    @validates_schema
    def check_tools(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Refuse a tool choice without its tool, and top_logprobs without logprobs."""
        check_choice(tuple(data.get("tools") or ()), data.get("tool_choice"))
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise ValidationError("Only allowed when 'logprobs' is true.", "top_logprobs")

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> GenerationRequest:
        """Return the gateway's chat request (up to GATEWAY_MAX_TOKENS unless limited)."""
        effort = data.get("reasoning_effort")
        return self.request(Op.CHAT, data, self.max_tokens_limit,
                            messages=tuple(data["messages"]),
                            tools=tuple(data.get("tools") or ()),
                            tool_choice=data.get("tool_choice"),
                            parallel_tool_calls=data.get("parallel_tool_calls"),
                            think=None if effort is None else EFFORTS[effort],
                            logprobs=bool(data.get("logprobs")),
                            top_logprobs=data.get("top_logprobs"))


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
