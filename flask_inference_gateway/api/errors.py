"""Render every error the gateway answers with, in the shape of the client's dialect.

Each dialect declares its shape once, in its own ``errors.py`` (a ``body`` and
a ``status`` function): the gateway's own (``native``), OpenAI's and Ollama's.
The shape follows the route: a view class names its dialect (``dialect =
"openai"``), and every path under ``/api/`` is Ollama's, unknown paths too;
errors raised before the view (401, 429, 405) take the same shape.
"""

from __future__ import annotations

import logging
from types import ModuleType

import orjson
from flask import Response, current_app, has_request_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

from flask_inference_gateway.api.native import errors as native
from flask_inference_gateway.api.ollama import errors as ollama
from flask_inference_gateway.api.openai import errors as openai
from flask_inference_gateway.core.errors import (
    BadRequest,
    GatewayError,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    UnsupportedMediaType,
    URITooLong,
)
from flask_inference_gateway.observability import context

log = logging.getLogger(__name__)

SHAPES: dict[str, ModuleType] = {"native": native, "openai": openai, "ollama": ollama}

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    414: URITooLong,
    415: UnsupportedMediaType,
    429: RateLimited,
}


def as_gateway_error(exc: BaseException) -> GatewayError:
    """Return ``exc`` as a GatewayError; unknown exceptions become a bare 500."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, WebsocketMismatch):
        return BadRequest("This route takes a WebSocket handshake, or the request asked to "
                          "upgrade a route that is not one.")
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


def view_dialect(error: GatewayError) -> str | None:
    """Return the dialect the current request's view class declares, if any."""
    endpoint = request.endpoint
    allowed = error.headers.get("Allow")
    if allowed:  # 405 matched no route: look at the route the path has for an allowed method
        try:
            endpoint, _ = current_app.url_map.bind_to_environ(request.environ).match(
                method=allowed.split(",")[0].strip())
        except HTTPException:
            return None
    view = current_app.view_functions.get(endpoint or "")
    return getattr(getattr(view, "view_class", None), "dialect", None)


def request_dialect(error: GatewayError) -> str:
    """Return the dialect whose shape the current request's errors take."""
    if not has_request_context():
        return "native"
    # By path, not by view: an unknown /api/ path has no view, yet is Ollama's.
    blueprint = current_app.blueprints.get(request.blueprint or "")
    prefix = (blueprint.url_prefix or "") if blueprint is not None else ""
    if request.path.removeprefix(prefix).startswith(ollama.PREFIX):
        return "ollama"
    return view_dialect(error) or "native"


def error_response(error: GatewayError, dialect: str = "native") -> Response:
    """Render ``error`` as a JSON error response in ``dialect``'s shape."""
    shape = SHAPES[dialect]
    # Validation messages key list items by index: OPT_NON_STR_KEYS writes "0".
    response = Response(orjson.dumps(shape.body(error), option=orjson.OPT_NON_STR_KEYS),
                        status=shape.status(error), mimetype="application/json")
    response.headers.update(error.headers)
    return response


def note(exc: BaseException) -> GatewayError:
    """Log ``exc`` as it deserves, note it on the request's record, and return it typed."""
    error = as_gateway_error(exc)
    context.note_error(error.type, error.message, error.details.get("limit"))
    if not isinstance(exc, (GatewayError, HTTPException)):
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    elif error.status >= 500 and error.logged:
        cause = f" ({exc.__cause__!r})" if exc.__cause__ else ""
        log.warning("%s: %s%s", error.type, error.message, cause)
    return error


def handle_error(exc: BaseException) -> Response:
    """Log ``exc`` and answer with its JSON error response, in the route's dialect."""
    error = note(exc)
    return error_response(error, request_dialect(error))
