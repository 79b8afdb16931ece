"""Marshmallow fields for tools, tool calls and thinking, as every dialect takes them.

Tools are written the same way in OpenAI's and Ollama's APIs. A tool call's
arguments are JSON text in OpenAI's messages and an object in Ollama's (and
the gateway's own); both load as ``ToolCall`` with JSON text.
"""

from __future__ import annotations

from typing import Any

import orjson
from marshmallow import Schema, ValidationError, fields, post_load, validate

from flask_inference_gateway.api.fields import Flag, JsonSchema, describe
from flask_inference_gateway.core.pieces import ToolCall
from flask_inference_gateway.core.types import Tool, ToolChoice

TOOL_NAME = validate.Regexp(r"^[A-Za-z0-9_.:-]{1,64}$", error=(
    "Must be 1 to 64 letters, digits, '_', '-', '.' or ':'."))
EFFORTS = ("low", "medium", "high")


class FunctionSpec(Schema):
    """A function the model may call."""

    name = fields.String(required=True, validate=TOOL_NAME, metadata=describe(
        "The function's name.", "get_weather"))
    description = fields.String(allow_none=True)
    parameters = JsonSchema(allow_none=True, metadata=describe(
        "A JSON Schema of its arguments.", {"type": "object", "properties": {}}))
    strict = Flag(allow_none=True, metadata=describe(
        "OpenAI-compatible backends: hold the arguments to the schema."))


class ToolSpec(Schema):
    """One tool: ``{"type": "function", "function": {...}}``."""

    type = fields.String(load_default="function", validate=validate.Equal(
        "function", error="Only function tools are supported."))
    function = fields.Nested(FunctionSpec, required=True)

    @post_load
    def to_tool(self, data: dict[str, Any], **_kwargs: Any) -> Tool:
        """Return the gateway's tool."""
        spec = data["function"]
        return Tool(spec["name"], spec.get("description"), spec.get("parameters"),
                    spec.get("strict"))


def tools_field() -> fields.List:
    """Return a ``tools`` field: up to 128 function tools."""
    return fields.List(fields.Nested(ToolSpec), allow_none=True,
                       validate=validate.Length(max=128), metadata=describe(
                           "Functions the model may call: [{\"type\": \"function\", "
                           "\"function\": {\"name\", \"description\", \"parameters\"}}]."))


class ToolChoiceField(fields.Field):
    """OpenAI's ``tool_choice``: none, auto, required, or ``{"type": "function", ...}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any,
                     **kwargs: Any) -> ToolChoice:
        if value in ("none", "auto", "required"):
            return ToolChoice(value)
        if isinstance(value, dict) and value.get("type") == "function":
            function = value.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name:
                return ToolChoice("function", name)
        raise ValidationError('Must be "none", "auto", "required" or {"type": "function", '
                              '"function": {"name": ...}}.')


def check_choice(tools: tuple[Tool, ...], choice: ToolChoice | None) -> None:
    """Refuse a tool choice that names no given tool, or requires a tool with none given."""
    if choice is None or choice.mode in ("none", "auto"):
        return
    if not tools:
        raise ValidationError("A tool is required but 'tools' is empty.", "tool_choice")
    if choice.name is not None and choice.name not in {tool.name for tool in tools}:
        raise ValidationError(f"Names no tool in 'tools': {choice.name!r}.", "tool_choice")


class Think(fields.Field):
    """Ollama's ``think``: true, false, or an effort (low, medium, high)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any,
                     **kwargs: Any) -> bool | str:
        if isinstance(value, bool) or value in EFFORTS:
            return value
        raise ValidationError('Must be true, false, "low", "medium" or "high".')


def think_field() -> Think:
    """Return the ``think`` field of the Ollama and native bodies."""
    return Think(allow_none=True, metadata=describe(
        "Think before answering: true, false, or low, medium, high effort (OpenAI-compatible "
        "backends get it as reasoning_effort or the template's enable_thinking)."))


def logprobs_fields() -> tuple[fields.Boolean, fields.Integer]:
    """Return the ``logprobs`` and ``top_logprobs`` fields."""
    return (Flag(allow_none=True, metadata=describe(
                "Return each token's log probability.")),
            fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=0, max=20),
                           metadata=describe("How many alternatives to give per token, "
                                             "0 to 20.")))


class CallFunction(Schema):
    """The function a call names, its arguments an object (Ollama's form)."""

    index = fields.Integer(allow_none=True, metadata=describe("Ignored."))
    name = fields.String(required=True, validate=TOOL_NAME)
    arguments = fields.Dict(load_default=dict, metadata=describe("The arguments."))


class ObjectToolCall(Schema):
    """An assistant's tool call in Ollama's form (and the gateway's own)."""

    id = fields.String(allow_none=True, metadata=describe("The call's id, if it has one."))
    type = fields.String(allow_none=True, validate=validate.Equal("function"))
    function = fields.Nested(CallFunction, required=True)

    @post_load
    def to_call(self, data: dict[str, Any], **_kwargs: Any) -> ToolCall:
        """Return the gateway's call, with its arguments as JSON text."""
        function = data["function"]
        return ToolCall(0, data.get("id") or "", function["name"],
                        orjson.dumps(function["arguments"]).decode())


def object_calls_field() -> fields.List:
    """Return a message's ``tool_calls`` in Ollama's form."""
    return fields.List(fields.Nested(ObjectToolCall), allow_none=True, metadata=describe(
        "An assistant's tool calls: [{\"function\": {\"name\", \"arguments\": {...}}}]."))


def numbered(calls: list[ToolCall] | None) -> tuple[ToolCall, ...]:
    """Return a message's calls with their positions as indexes."""
    return tuple(ToolCall(i, c.id, c.name, c.arguments) for i, c in enumerate(calls or ()))


def call_id_field() -> fields.String:
    """Return a tool result's ``tool_call_id``: the call it answers (OpenAI's link)."""
    return fields.String(allow_none=True, metadata=describe("A tool result: the call it answers."))


def tool_name_field() -> fields.String:
    """Return a tool result's ``tool_name``: the tool that answered (Ollama's link)."""
    return fields.String(allow_none=True, metadata=describe(
        "A tool result: the tool that answered."))
