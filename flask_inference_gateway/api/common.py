"""What every view needs: body loading into the typed request, JSON dumping, documentation."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
from flask import Response, request
from flask_restx import Namespace, SchemaModel
from marshmallow import Schema, ValidationError

from flask_inference_gateway.api.native.schemas import ErrorResponse
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.api.swagger import definitions
from flask_inference_gateway.core.errors import (
    InvalidJSON,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)


def read_body(max_bytes: int, *, any_type: bool = False) -> bytes:
    """Return the raw body; refuse an oversized one, and one not typed JSON unless ``any_type``."""
    if not any_type and not request.is_json:
        raise UnsupportedMediaType()
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {max_bytes}.")
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds the limit of {max_bytes} bytes.")
    return body


@cache
def schema_for(cls: type[Schema], **settings: Any) -> Schema:
    """Return the one instance of ``cls`` with these settings (building one is not cheap)."""
    return cls(**settings)


def load_with(cls: type[Schema], *, any_type: bool = False, **settings: Any) -> Any:
    """Parse the JSON body and load it with the schema ``cls`` built with ``settings``.

    ``any_type`` reads the body as JSON whatever its Content-Type says, as Ollama does.
    """
    body = read_body(gateway().settings.max_body_bytes, any_type=any_type)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from exc
    return load_data(schema_for(cls, **settings), data)


def load_data(schema: Schema, data: Any) -> Any:
    """Validate decoded JSON with ``schema``; a failure is a 422 that names the fields."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(fields=exc.messages) from exc


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    """Return ``payload`` as a JSON response."""
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


# Completion ids: a random part drawn once per process, then a counter; unique
# without a system call per request.
_ID_SEED = os.urandom(8).hex()
_ids = itertools.count()


def new_id(prefix: str) -> str:
    """Return a new completion id starting with ``prefix``."""
    return f"{prefix}-{_ID_SEED}{next(_ids):08x}"


def schema_model(namespace: Namespace, schema: type[Schema]) -> SchemaModel:
    """Register ``schema``'s Swagger definition on ``namespace`` and return the model."""
    return namespace.schema_model(schema.__name__, definitions()[schema.__name__])


ERROR_STATUSES = {
    400: "Malformed JSON, or the backend rejected the request",
    401: "Missing or invalid API key",
    403: "The API key may not use this model",
    404: "The model is not served",
    413: "Body over GATEWAY_MAX_BODY_BYTES",
    415: "Body is not application/json",
    422: "Body failed validation; see error.fields",
    429: "Request-rate limit, token budget or stream cap reached; see Retry-After",
    502: "Backend unreachable or failed",
    503: "Backend busy, or the limit store is down and the gateway fails closed",
    504: "Backend timed out",
}


def document_errors(namespace: Namespace,
                    schema: type[Schema] = ErrorResponse) -> Callable[[Any], Any]:
    """Return a decorator that documents the error answers of a generating route."""
    error_model = schema_model(namespace, schema)

    def decorate(func: Any) -> Any:
        for status, text in ERROR_STATUSES.items():
            func = namespace.response(status, text, error_model)(func)
        return func

    return decorate
