"""Request and response bodies of the gateway's own routes; requests load into GenerationRequest."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from flask_inference_gateway.api.fields import (
    ROLES,
    Number,
    describe,
    images_field,
    options_from,
    penalty,
    response_format_field,
)
from flask_inference_gateway.api.tools import (
    ToolChoiceField,
    call_id_field,
    check_choice,
    logprobs_fields,
    numbered,
    object_calls_field,
    think_field,
    tool_name_field,
    tools_field,
)
from flask_inference_gateway.core.types import GenerationRequest, Message, Op


class GenerationOptions(Schema):
    """Sampling options shared by every generating route."""

    model = fields.String(validate=validate.Length(min=1, max=256),
                          metadata=describe("Model to run; default GATEWAY_DEFAULT_MODEL.",
                                            "llama3.2"))
    max_tokens = fields.Integer(strict=True, load_default=256, validate=validate.Range(min=1),
                                metadata=describe("Most tokens to generate; at most "
                                                  "GATEWAY_MAX_TOKENS (default 4096).", 256))
    temperature = Number(load_default=0.7, validate=validate.Range(min=0, max=2),
                         metadata=describe("Sampling temperature, 0 to 2.", 0.7))
    top_p = Number(validate=validate.Range(min=0, max=1),
                   metadata=describe("Nucleus sampling probability mass, 0 to 1."))
    top_k = fields.Integer(strict=True, validate=validate.Range(min=1),
                           metadata=describe("Sample from the k most likely tokens."))
    stop = fields.List(fields.String(validate=validate.Length(min=1)),
                       validate=validate.Length(max=16),
                       metadata=describe("Strings that end the generation."))
    seed = fields.Integer(strict=True, metadata=describe("Seed for reproducible sampling."))
    presence_penalty = penalty("that appeared at all")
    frequency_penalty = penalty("by how often they appeared")
    response_format = response_format_field()
    think = think_field()
    logprobs, top_logprobs = logprobs_fields()

    def __init__(self, *, max_tokens_limit: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens_limit = max_tokens_limit

    @validates("max_tokens")
    def check_max_tokens(self, value: int, **_kwargs: Any) -> None:
        """Refuse a max_tokens above the configured limit."""
        if value > self.max_tokens_limit:
            raise ValidationError(f"Must be at most {self.max_tokens_limit}.")

    op = Op.GENERATE  # what a loaded body asks for

    @validates_schema
    def check_tools(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Refuse a tool choice without its tool, and top_logprobs without logprobs."""
        check_choice(tuple(data.get("tools") or ()), data.get("tool_choice"))
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise ValidationError("Only allowed when 'logprobs' is true.", "top_logprobs")

    @post_load
    def to_request(self, data: dict[str, Any], **_kwargs: Any) -> GenerationRequest:
        """Return the loaded body as the gateway's request."""
        options = options_from(data, data["max_tokens"])
        messages = tuple(Message(m["role"], m["content"], tuple(m.get("images") or ()),
                                 numbered(m.get("tool_calls")), m.get("tool_call_id") or "",
                                 m.get("tool_name") or "")
                         for m in data.get("messages", ()))
        return GenerationRequest(self.op, options, model=data.get("model") or "",
                                 prompt=data.get("prompt", ""), system=data.get("system"),
                                 messages=messages, response_format=data.get("response_format"),
                                 images=tuple(data.get("images") or ()),
                                 tools=tuple(data.get("tools") or ()),
                                 tool_choice=data.get("tool_choice"), think=data.get("think"),
                                 logprobs=bool(data.get("logprobs")),
                                 top_logprobs=data.get("top_logprobs"))


class GenerateRequest(GenerationOptions):
    """Body of POST /v1/generate and /v1/generate/stream."""

    prompt = fields.String(required=True, validate=validate.Length(min=1),
                           metadata=describe("The text to continue.", "Why is the sky blue?"))
    system = fields.String(metadata=describe("System prompt to use instead of the model's."))
    images = images_field("Images the prompt refers to")


class ChatMessage(Schema):
    """One message of a conversation."""

    role = fields.String(required=True, validate=validate.OneOf(ROLES),
                         metadata=describe("Who wrote it.", "user"))
    content = fields.String(required=True, metadata=describe("The message text.", "Hello!"))
    images = images_field("Images the message shows")
    tool_calls = object_calls_field()
    tool_call_id = call_id_field()
    tool_name = tool_name_field()


class ChatRequest(GenerationOptions):
    """Body of POST /v1/chat and /v1/chat/stream."""

    op = Op.CHAT

    messages = fields.List(fields.Nested(ChatMessage), required=True,
                           validate=validate.Length(min=1),
                           metadata=describe("The conversation so far, oldest first."))
    tools = tools_field()
    tool_choice = ToolChoiceField(allow_none=True, metadata=describe(
        "none, auto, required, or {\"type\": \"function\", \"function\": {\"name\"}}; "
        "Ollama backends take only none and auto."))


class UsageBody(Schema):
    """Token counts of one generation."""

    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class CompletionBody(Schema):
    """Common part of a finished generation."""

    id = fields.String(required=True, metadata=describe("Unique id of this completion."))
    model = fields.String(required=True)
    done_reason = fields.String(allow_none=True, metadata=describe("stop, length, ...", "stop"))
    usage = fields.Nested(UsageBody, required=True)
    created = fields.Integer(required=True, metadata=describe("Unix time of the answer."))


class GenerateResponse(CompletionBody):
    """Answer of POST /v1/generate."""

    text = fields.String(required=True, metadata=describe("The generated text."))


class ChatResponse(CompletionBody):
    """Answer of POST /v1/chat."""

    message = fields.Nested(ChatMessage, required=True)


class ErrorDetail(Schema):
    """What went wrong."""

    type = fields.String(required=True, metadata=describe("Machine-readable kind.",
                                                          "validation_error"))
    message = fields.String(required=True, metadata=describe("What to do about it."))
    fields_ = fields.Dict(data_key="fields",
                          metadata=describe("Per-field messages (validation errors only)."))


class ErrorResponse(Schema):
    """Every error the gateway returns."""

    error = fields.Nested(ErrorDetail, required=True)


class StreamEvent(Schema):
    """The JSON in one SSE ``data:`` line of a streaming route.

    Pieces carry ``text``; the last event carries ``done``, ``done_reason`` and
    ``usage``; a failure after the stream started is an ``event: error`` whose
    data carries ``error``.
    """

    text = fields.String(metadata=describe("The next piece of generated text."))
    thinking = fields.String(metadata=describe("The next piece of the model's thinking."))
    logprobs = fields.List(fields.Dict(), metadata=describe("When asked for: per token."))
    tool_calls = fields.List(fields.Dict(), metadata=describe(
        "On the last event: the tool calls, whole, arguments as objects."))
    done = fields.Boolean(metadata=describe("True on the last event."))
    done_reason = fields.String(allow_none=True)
    usage = fields.Nested(UsageBody)
    error = fields.Nested(ErrorDetail)
