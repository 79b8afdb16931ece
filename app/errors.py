"""Typed errors with one JSON shape, rendered by one function.

Every error the gateway answers with is a ``GatewayError``::

    GatewayError (500 internal_error)
    ├── BadRequest (400 bad_request)
    │   └── InvalidJSON (400 invalid_json)
    ├── Unauthorized (401 unauthorized, WWW-Authenticate)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    │   └── ModelNotFound (404 model_not_found)
    ├── MethodNotAllowed (405 method_not_allowed)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── ValidationFailed (422 validation_error)
    ├── ClientLeft (499 client_left: the client went away; nobody reads it)
    ├── RateLimited (429 rate_limited, Retry-After)
    ├── LimitsUnavailable (503 limits_unavailable)
    ├── ShuttingDown (503 shutting_down, Retry-After)
    └── BackendError (502 backend_error)
        ├── BackendRejected (400 backend_rejected)
        ├── BackendUnavailable (502 backend_unavailable)
        ├── BackendStreamBroken (502 backend_stream_broken)
        ├── BackendBusy (503 backend_busy, Retry-After)
        ├── NoBackendAvailable (503 no_backend_available, Retry-After)
        ├── NotReady (503 not_ready)
        └── BackendTimeout (504 backend_timeout)

The body is always ``{"error": {"type": ..., "message": ..., **details}}``, except
on routes whose view class sets ``openai_errors = True`` (the OpenAI-compatible
API), where it takes OpenAI's shape: ``{"error": {"message", "type", "param",
"code", **details}}`` with OpenAI's type for the status and the gateway's type as
``code``. ``handle_error`` picks the shape, so errors raised before the view
(401, 429, 405) take it too. Under ``/api/`` (the Ollama-compatible API, unknown
paths included) the body is Ollama's ``{"error": "message"}`` and a validation
error is a 400, as Ollama answers.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Response, current_app, has_request_context, request
from werkzeug.exceptions import HTTPException

from app.observability.context import observe

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status = 500
    type = "internal_error"
    message = "The gateway failed unexpectedly; the error was logged."
    logged = True  # a 5xx of this class is worth a warning line

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None,
                 **details: Any) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.headers = headers or {}
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body of this error."""
        return {"error": {"type": self.type, "message": self.message, **self.details}}

    def to_openai_dict(self) -> dict[str, Any]:
        """Return the body of this error in OpenAI's shape."""
        param, problem = first_problem(self.details.get("fields"))
        message = f"Invalid '{param}': {problem}" if param else self.message
        kind = OPENAI_TYPES.get(self.status) or (
            "server_error" if self.status >= 500 else "invalid_request_error")
        body = {"message": message, "type": kind, "param": param, "code": self.type}
        return {"error": {**body, **{k: v for k, v in self.details.items() if k not in body}}}

    def to_ollama_dict(self) -> dict[str, Any]:
        """Return the body of this error in Ollama's shape: the message alone."""
        param, problem = first_problem(self.details.get("fields"))
        return {"error": f"invalid {param}: {problem}" if param else self.message}


# OpenAI's error type per status (the names of its SDK's exceptions); other 4xx
# are "invalid_request_error", 5xx "server_error".
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


def first_problem(fields: Any, path: str = "") -> tuple[str | None, str | None]:
    """Return the first invalid field of validation messages (``messages[0].content``) and
    its message."""
    if isinstance(fields, list) and fields:
        return path or None, str(fields[0])
    if not isinstance(fields, dict) or not fields:
        return None, None
    key, value = next(iter(fields.items()))
    name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
    return first_problem(value, name)


class BadRequest(GatewayError):
    status, type = 400, "bad_request"
    message = "The request could not be understood."


class InvalidJSON(BadRequest):
    type = "invalid_json"
    message = "The request body is not valid JSON."


class Unauthorized(GatewayError):
    status, type = 401, "unauthorized"
    message = "Send your API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
                         **details)


class Forbidden(GatewayError):
    status, type = 403, "forbidden"
    message = "This API key may not do that."


class NotFound(GatewayError):
    status, type = 404, "not_found"
    message = "No such route; see /docs for the API."


class ModelNotFound(NotFound):
    type = "model_not_found"
    message = "The backend does not serve this model; see GET /v1/models."


class MethodNotAllowed(GatewayError):
    status, type = 405, "method_not_allowed"
    message = "This route does not accept that method."


class PayloadTooLarge(GatewayError):
    status, type = 413, "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(GatewayError):
    status, type = 415, "unsupported_media_type"
    message = "Send the body as JSON with 'Content-Type: application/json'."


class ValidationFailed(GatewayError):
    status, type = 422, "validation_error"
    message = "The request body is invalid; see 'fields' for what to change."


class ClientLeft(GatewayError):
    status, type = 499, "client_left"
    logged = False
    message = "The client closed the connection before the request was served."


class ShuttingDown(GatewayError):
    status, type = 503, "shutting_down"
    message = "The gateway is restarting; retry the request."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": "1"}, **details)


class RateLimited(GatewayError):
    status, type = 429, "rate_limited"
    message = "Too many requests; retry after the time in Retry-After."


class LimitsUnavailable(GatewayError):
    status, type = 503, "limits_unavailable"
    logged = False  # the limiter logs the outage once, not each refused request
    message = "The rate-limit store cannot be reached; retry shortly."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": "1"}, limit="store", **details)


class BackendError(GatewayError):
    status, type = 502, "backend_error"
    message = "The model backend answered with an error."


class BackendRejected(BackendError):
    status, type = 400, "backend_rejected"
    message = "The model backend rejected the request."


class BackendUnavailable(BackendError):
    type = "backend_unavailable"
    message = "The model backend cannot be reached."


class BackendStreamBroken(BackendError):
    type = "backend_stream_broken"
    message = "The model backend dropped the stream before it finished."


class BackendBusy(BackendError):
    status, type = 503, "backend_busy"
    message = "The model backend is busy; retry after the time in Retry-After."


class NoBackendAvailable(BackendError):
    status, type = 503, "no_backend_available"
    message = "Every backend failed recently and is cooling down; retry shortly."


class NotReady(BackendError):
    status, type = 503, "not_ready"
    message = "The gateway cannot serve requests yet."


class BackendTimeout(BackendError):
    status, type = 504, "backend_timeout"
    message = "The model backend did not answer in time."


class HTTPError(GatewayError):
    """An HTTP error raised by Flask or Werkzeug that has no class of its own."""

    type = "http_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
}


def as_gateway_error(exc: BaseException) -> GatewayError:
    """Return ``exc`` as a GatewayError; unknown exceptions become a bare 500."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HTTPException):
        cls = _HTTP_ERRORS.get(exc.code or 500)
        if cls is None:
            return HTTPError(exc.code or 500, exc.description or GatewayError.message)
        if cls is RateLimited:
            return RateLimited(f"Rate limit exceeded ({exc.description}); retry after the "
                               "time in Retry-After.")
        methods = getattr(exc, "valid_methods", None)
        return cls(headers={"Allow": ", ".join(methods)} if methods else None)
    return GatewayError()


def openai_route(error: GatewayError) -> bool:
    """Return whether the current request's route answers errors in OpenAI's shape."""
    if not has_request_context():
        return False
    endpoint = request.endpoint
    allowed = error.headers.get("Allow")
    if allowed:  # 405 matched no route: look at the route the path has for an allowed method
        try:
            endpoint, _ = current_app.url_map.bind_to_environ(request.environ).match(
                method=allowed.split(",")[0].strip())
        except HTTPException:
            return False
    view = current_app.view_functions.get(endpoint or "")
    return bool(getattr(getattr(view, "view_class", None), "openai_errors", False))


OLLAMA_PREFIX = "/api/"


def ollama_route() -> bool:
    """Return whether the current request is for the Ollama-compatible API (under /api/)."""
    if not has_request_context():
        return False
    # By path, not by view: an unknown /api/ path has no view, yet is Ollama's.
    blueprint = current_app.blueprints.get(request.blueprint or "")
    prefix = (blueprint.url_prefix or "") if blueprint is not None else ""
    return request.path.removeprefix(prefix).startswith(OLLAMA_PREFIX)


def error_response(error: GatewayError, *, openai: bool = False,
                   ollama: bool = False) -> Response:
    """Render ``error`` as a JSON error response: the gateway's shape, OpenAI's or Ollama's."""
    body = (error.to_ollama_dict() if ollama else error.to_openai_dict() if openai
            else error.to_dict())
    # Ollama has no 422: it answers an invalid body with 400.
    status = 400 if ollama and error.status == 422 else error.status
    # Validation messages key list items by index: OPT_NON_STR_KEYS writes "0".
    response = Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
                        status=status,
                        mimetype="application/json")
    response.headers.update(error.headers)
    return response


def handle_error(exc: BaseException) -> Response:
    """Log ``exc`` as it deserves and answer with its JSON error response."""
    error = as_gateway_error(exc)
    observe(error=error.type, error_message=error.message, limit=error.details.get("limit"))
    if not isinstance(exc, (GatewayError, HTTPException)):
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    elif error.status >= 500 and error.logged:
        cause = f" ({exc.__cause__!r})" if exc.__cause__ else ""
        log.warning("%s: %s%s", error.type, error.message, cause)
    return error_response(error, openai=openai_route(error), ollama=ollama_route())
