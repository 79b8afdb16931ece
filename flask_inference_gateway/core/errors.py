"""The gateway's error tree: what can go wrong, with a status and a type each.

No Flask and no ``requests`` here: the upstream package raises these, and the
API renders them in each dialect's shape (``flask_inference_gateway/api/errors.py``).

    GatewayError (500 internal_error)
    ├── BadRequest (400 bad_request)
    │   └── InvalidJSON (400 invalid_json)
    ├── Unauthorized (401 unauthorized, WWW-Authenticate)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    │   └── ModelNotFound (404 model_not_found)
    ├── MethodNotAllowed (405 method_not_allowed)
    ├── RequestTimeout (408 request_timeout: the head or body stopped coming)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── URITooLong (414 uri_too_long)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── ValidationFailed (422 validation_error)
    ├── ClientLeft (499 client_left: the client went away; nobody reads it)
    ├── RateLimited (429 rate_limited, Retry-After)
    ├── LimitsUnavailable (503 limits_unavailable)
    ├── ShuttingDown (503 shutting_down, Retry-After)
    ├── HTTPError (any other status Flask or Werkzeug raised)
    └── BackendError (502 backend_error)
        ├── BackendRejected (400 backend_rejected)
        ├── BackendFailedRequest (502 backend_failed: a 500 with the backend's reason)
        ├── BackendUnavailable (502 backend_unavailable)
        ├── BackendStreamBroken (502 backend_stream_broken)
        ├── BackendBusy (503 backend_busy, Retry-After)
        ├── NoBackendAvailable (503 no_backend_available, Retry-After)
        ├── NotReady (503 not_ready)
        └── BackendTimeout (504 backend_timeout)

An error carries a message for people, optional ``details`` (``fields`` of a
validation error, ``limit`` of a rate limit, ...) and the headers its answer
needs (``Retry-After``, ``Allow``).
"""

from __future__ import annotations

from typing import Any


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

    def first_invalid_field(self) -> tuple[str | None, str | None]:
        """Return the first invalid field of a validation error (``messages[0].content``)
        and what is wrong with it; (None, None) for other errors."""
        return first_problem(self.details.get("fields"))


def first_problem(fields: Any, path: str = "") -> tuple[str | None, str | None]:
    """Return the first field named in nested validation messages, and its message."""
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


class RequestTimeout(GatewayError):
    status, type = 408, "request_timeout"
    message = "The request did not arrive in time; the connection is closed."


class PayloadTooLarge(GatewayError):
    status, type = 413, "payload_too_large"
    message = "The request body is too large."


class URITooLong(GatewayError):
    status, type = 414, "uri_too_long"
    message = "The request line is too long."


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


class BackendFailedRequest(BackendError):
    """The backend answered 500 and said why: this request failed, the backend is up."""

    type = "backend_failed"
    message = "The model backend failed this request."


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
