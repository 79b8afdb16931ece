"""The parts of OpenAI's request bodies that are not options: messages, their content
and tool calls, prompts, lists of strings."""

from __future__ import annotations

from typing import Any

import orjson
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from flask_inference_gateway.api.fields import describe, image_from_url
from flask_inference_gateway.api.tools import TOOL_NAME, call_id_field, numbered
from flask_inference_gateway.core import types
from flask_inference_gateway.core.pieces import ToolCall

ROLES = ("system", "developer", "user", "assistant", "tool")

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


class Arguments(fields.String):
    """A tool call's arguments: the JSON text of an object."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = orjson.loads(text or "{}")
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValidationError("Must be the JSON text of an object, e.g. "
                                  "'{\"city\": \"Paris\"}'.")
        return text


class CallFunction(Schema):
    """The function a call names, its arguments as JSON text."""

    name = fields.String(required=True, validate=TOOL_NAME)
    arguments = Arguments(load_default="{}")


class ToolCallBody(Schema):
    """An assistant's tool call, as OpenAI writes it."""

    id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    type = fields.String(load_default="function", validate=validate.Equal("function"))
    function = fields.Nested(CallFunction, required=True)

    @post_load
    def to_call(self, data: dict[str, Any], **_kwargs: Any) -> ToolCall:
        """Return the gateway's call."""
        return ToolCall(0, data["id"], data["function"]["name"], data["function"]["arguments"])


class Message(Schema):
    """One message of a conversation; ``developer`` counts as ``system``."""

    role = fields.String(required=True, validate=validate.OneOf(ROLES),
                         metadata=describe("Who wrote it.", "user"))
    content = Content(allow_none=True, metadata=describe(
        "A string, or a list of text and image_url (data: URL) parts; may be null in an "
        "assistant's message with tool_calls.", "Hello!"))
    name = fields.String(allow_none=True, metadata=describe(
        "A tool result's tool; otherwise ignored."))
    tool_calls = fields.List(fields.Nested(ToolCallBody), allow_none=True, metadata=describe(
        "An assistant's tool calls."))
    tool_call_id = call_id_field()
    reasoning_content = fields.String(allow_none=True, metadata=describe(
        "An assistant's earlier reasoning (Ollama backends get it as thinking)."))

    @validates_schema
    def check_content(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Require content, except in an assistant's message that calls tools."""
        if data.get("content") is None and not (data["role"] == "assistant"
                                                and data.get("tool_calls")):
            raise ValidationError("Missing data for required field.", "content")

    @post_load
    def to_message(self, data: dict[str, Any], **_kwargs: Any) -> types.Message:
        """Return the gateway's message."""
        role = "system" if data["role"] == "developer" else data["role"]
        text, images = data.get("content") or ("", ())
        return types.Message(role, text, images, numbered(data.get("tool_calls")),
                             data.get("tool_call_id") or "",
                             (data.get("name") or "") if role == "tool" else "",
                             data.get("reasoning_content") or "")
