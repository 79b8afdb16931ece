"""Marshmallow pieces every dialect's schemas share."""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from flask_inference_gateway.core.types import OPTION_NAMES, Options, ResponseFormat

ROLES = ("system", "user", "assistant", "tool")


class Number(fields.Float):
    """A JSON number; unlike fields.Float it refuses strings and booleans."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, (str, bool)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Flag(fields.Boolean):
    """A JSON true or false (marshmallow's Boolean also takes "yes", 1 and "on")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise self.make_error("invalid")
        return value


def describe(text: str, example: Any = None) -> dict[str, Any]:
    """Return field metadata that Swagger shows."""
    return {"description": text} if example is None else {"description": text, "example": example}


def options_from(source: Mapping[str, Any], max_tokens: int) -> Options:
    """Return the sampling options named as the gateway names them in a loaded body."""
    stop = source.get("stop")
    named = {name: source.get(name) for name in OPTION_NAMES if name not in ("max_tokens", "stop")}
    return Options(max_tokens=max_tokens, stop=tuple(stop) if stop is not None else None,
                   **named)


class JsonSchema(fields.Dict):
    """A JSON Schema: an object whose ``type`` (when given) is a string or a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        schema = super()._deserialize(value, attr, data, **kwargs)
        if not schema or not isinstance(schema.get("type", ""), (str, list)):
            raise ValidationError("Must be a JSON Schema object, e.g. {\"type\": \"object\", "
                                  "\"properties\": {...}}.")
        return schema


class OpenAIJsonSchema(Schema):
    """OpenAI's ``response_format.json_schema``: a name, the schema, strictness."""

    name = fields.String(load_default="response", validate=validate.Length(min=1, max=64))
    schema = JsonSchema(required=True, metadata=describe("The JSON Schema the answer must match."))
    strict = Flag(allow_none=True)
    description = fields.String(allow_none=True)


class ResponseFormatBody(Schema):
    """OpenAI's ``response_format``: text, any JSON object, or JSON matching a schema."""

    type = fields.String(required=True, validate=validate.OneOf(
        ("text", "json_object", "json_schema")))
    json_schema = fields.Nested(OpenAIJsonSchema, allow_none=True)

    @validates_schema
    def check_schema(self, data: dict[str, Any], **_kwargs: Any) -> None:
        """Require json_schema exactly when the type is json_schema."""
        if data["type"] == "json_schema" and not data.get("json_schema"):
            raise ValidationError("Required when type is 'json_schema'.", "json_schema")

    @post_load
    def to_format(self, data: dict[str, Any], **_kwargs: Any) -> ResponseFormat | None:
        """Return the gateway's structured-output request (None for plain text)."""
        if data["type"] == "text":
            return None
        if data["type"] == "json_object":
            return ResponseFormat()
        spec = data["json_schema"]
        return ResponseFormat(spec["schema"], spec["name"], spec.get("strict"))


def response_format_field() -> fields.Nested:
    """Return the ``response_format`` field of the native and OpenAI bodies."""
    return fields.Nested(ResponseFormatBody, allow_none=True, metadata=describe(
        "Structured output: {\"type\": \"json_object\"}, or {\"type\": \"json_schema\", "
        "\"json_schema\": {\"name\", \"schema\"}}; Ollama backends get it as 'format'."))


def penalty(what: str) -> Number:
    """Return a presence or frequency penalty field: -2 to 2, as OpenAI takes it."""
    return Number(allow_none=True, validate=validate.Range(min=-2, max=2),
                  metadata=describe(f"Penalise tokens {what}, -2 to 2."))


DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.DOTALL)
NO_FETCHING = ("Send the image inline, as a data: URL (data:image/png;base64,...): the "
               "gateway does not fetch URLs on a client's behalf.")


def check_base64(data: str) -> str:
    """Return ``data`` when it is base64, else raise a ValidationError."""
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValidationError("Must be a base64-encoded image file.") from None
    return data


def image_from_url(url: Any) -> str:
    """Return the base64 data of an image given as a data: URL; refuse any other URL."""
    if not isinstance(url, str):
        raise ValidationError("Must be a data: URL string.")
    match = DATA_URL.fullmatch(url.strip())
    if match is None:
        raise ValidationError(NO_FETCHING if url.startswith(("http://", "https://")) else
                              "Must be a data: URL of a base64-encoded image "
                              "(data:image/png;base64,...).")
    return check_base64(match["data"])


class Base64Image(fields.String):
    """One image file, base64-encoded (Ollama's ``images`` items)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return check_base64(super()._deserialize(value, attr, data, **kwargs))


def images_field(what: str) -> fields.List:
    """Return an ``images`` field: a list of up to 16 base64-encoded image files."""
    return fields.List(Base64Image(), allow_none=True, validate=validate.Length(max=16),
                       metadata=describe(
                           f"{what}: base64-encoded image files, for a model that takes "
                           "images."))
