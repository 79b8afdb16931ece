"""What every view needs: the gateway state, body loading and JSON dumping."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, request
from flask_restx import Namespace, SchemaModel
from marshmallow import Schema, ValidationError

from app.backend import Completion
from app.errors import InvalidJSON, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.schemas.inference import ErrorResponse
from app.schemas.swagger import definitions
from app.state import gateway


def read_body(max_bytes: int) -> bytes:
    """Return the raw JSON body, refusing a wrong type or an oversized body."""
    if not request.is_json:
        raise UnsupportedMediaType()
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {max_bytes}.")
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds the limit of {max_bytes} bytes.")
    return body


def load_body(name: str) -> dict[str, Any]:
    """Parse the JSON body and validate it with the named request schema."""
    return load_with(gateway().schemas[name])


def load_with(schema: Schema) -> Any:
    """Parse the JSON body and validate it with ``schema``."""
    body = read_body(gateway().max_body_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from exc
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


def completion_fields(completion: Completion, prefix: str) -> dict[str, Any]:
    """Return the fields every finished completion carries."""
    return {"id": new_id(prefix), "model": completion.model,
            "done_reason": completion.done_reason, "usage": completion.usage.to_dict(),
            "created": int(time.time())}


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
