"""One JSON error shape, one renderer, for every error class."""

from __future__ import annotations

import logging

import orjson
import pytest
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    ImATeapot,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    RequestTimeout,
    RequestURITooLarge,
    UnsupportedMediaType,
)

from flask_inference_gateway.api.errors import as_gateway_error, handle_error
from flask_inference_gateway.api.native import errors as native_errors
from flask_inference_gateway.core import errors
from flask_inference_gateway.core.errors import GatewayError


def all_error_classes() -> list[type[GatewayError]]:
    found, todo = [], [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls is not errors.HTTPError]


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_renders_the_one_shape(cls: type[GatewayError], app) -> None:
    with app.app_context():
        response = handle_error(cls())
    body = orjson.loads(response.get_data())
    assert response.status_code == cls.status
    assert response.mimetype == "application/json"
    assert set(body) == {"error"}
    assert body["error"]["type"] == cls.type
    assert body["error"]["message"].endswith(".")


def test_type_names_are_unique_snake_case() -> None:
    types = [cls.type for cls in all_error_classes()]
    assert len(types) == len(set(types))
    assert all(t.replace("_", "").isalpha() and t.islower() for t in types)


@pytest.mark.parametrize(("exc", "status", "type_"), [
    (BadRequest(), 400, "bad_request"),
    (NotFound(), 404, "not_found"),
    (MethodNotAllowed(valid_methods=["POST"]), 405, "method_not_allowed"),
    (RequestTimeout(), 408, "request_timeout"),
    (RequestEntityTooLarge(), 413, "payload_too_large"),
    (RequestURITooLarge(), 414, "uri_too_long"),
    (UnsupportedMediaType(), 415, "unsupported_media_type"),
    (ImATeapot(), 418, "http_error"),
], ids=["400", "404", "405", "408", "413", "414", "415", "other"])
def test_http_exceptions_map(exc: HTTPException, status: int, type_: str) -> None:
    error = as_gateway_error(exc)
    assert (error.status, error.type) == (status, type_)


def test_405_lists_allowed_methods() -> None:
    assert as_gateway_error(MethodNotAllowed(valid_methods=["POST"])).headers == {
        "Allow": "POST"}


def test_unexpected_exception_is_a_500_that_leaks_nothing(app, caplog) -> None:
    with app.app_context(), caplog.at_level(logging.ERROR, "flask_inference_gateway.api.errors"):
        response = handle_error(RuntimeError("secret /etc/passwd detail"))
    assert response.status_code == 500
    assert b"secret" not in response.get_data()
    assert orjson.loads(response.get_data())["error"]["type"] == "internal_error"
    assert "RuntimeError" in caplog.text


def test_details_join_the_error_object() -> None:
    error = errors.ValidationFailed(fields={"prompt": ["Missing data for required field."]})
    assert native_errors.body(error)["error"]["fields"] == {
        "prompt": ["Missing data for required field."]}
