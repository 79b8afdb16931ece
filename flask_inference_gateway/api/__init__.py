"""The HTTP surface: each dialect's namespaces and the shared routes, served from one Blueprint.

The only package that imports flask-restx. Dialects: ``native`` (the gateway's
own /v1/generate and /v1/chat, SSE and WebSocket), ``openai`` and ``ollama``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask_restx import Api, apidoc
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from flask_inference_gateway.api import health, metrics, models
from flask_inference_gateway.api.errors import handle_error
from flask_inference_gateway.api.native import routes as native_routes
from flask_inference_gateway.api.native import websocket
from flask_inference_gateway.api.ollama import routes as ollama_routes
from flask_inference_gateway.api.openai import routes as openai_routes

NAMESPACES = (native_routes.ns, native_routes.streaming, models.ns, health.ns, metrics.ns,
              openai_routes.ns, ollama_routes.ns)
# Swagger 2.0 has no bearer scheme: an apiKey in the Authorization header lets
# Swagger UI's "Authorize" button send "Bearer <key>" (X-API-Key works too).
AUTHORIZATIONS = {"bearer": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "Enter 'Bearer ' followed by your API key."}}


class GatewayApi(Api):
    """A restx Api whose errors take the gateway's one JSON shape."""

    def handle_error(self, e: Exception) -> Response:
        """Render every error raised in the gateway's routes."""
        return handle_error(e)

    def error_router(self, original_handler: Any, e: Exception) -> Response:
        """Send an error to the gateway's renderer, even when restx's own check fails."""
        try:
            return super().error_router(original_handler, e)
        except HTTPException:
            # restx matches the URL again to see whose error it is; for a
            # WebSocket route asked without the handshake (or the reverse)
            # werkzeug raises there, and Flask would answer a bare 500.
            return handle_error(e)


def create_blueprint(name: str = "gateway", url_prefix: str = "") -> Blueprint:
    """Return a Blueprint carrying every gateway route, Swagger UI and the spec."""
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix or None)
    api = GatewayApi(blueprint, version="1.0", title="Inference gateway",
                     description="Validated, streaming, rate-limited access to GPU-hosted "
                                 "models (Ollama).",
                     doc="/docs", default_mediatype="application/json",
                     authorizations=AUTHORIZATIONS, security="bearer")
    for namespace in NAMESPACES:
        api.add_namespace(namespace)
    websocket.register(blueprint)
    return blueprint


CATCH_ALL = "unknown_path"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def unknown_path(path: str) -> Response:
    """Answer a path under the prefix that no gateway route serves: 405 or 404, as JSON."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in METHODS:
        try:
            endpoint, _ = adapter.match(method=method)
        except HTTPException:
            continue
        if not endpoint.endswith("." + CATCH_ALL):
            allowed.append(method)
    raise MethodNotAllowed(valid_methods=allowed) if allowed else NotFound()


def serve_swagger_assets(app: Flask, prefix: str) -> None:
    """Serve Swagger UI's files under the gateway's prefix (unless the host app already does)."""
    restx = app.extensions.setdefault("restx", {})
    if not restx.get("apidoc_registered"):
        app.register_blueprint(apidoc.apidoc, url_prefix=prefix)
        restx["apidoc_registered"] = True


def keep_errors_inside(blueprint: Blueprint) -> None:
    """Answer unknown paths under a mounted gateway's prefix with the gateway's JSON errors.

    Only for a prefix: a host app's own 404 and 405 pages stay its own.
    """
    blueprint.add_url_rule("/<path:path>", CATCH_ALL, unknown_path, methods=list(METHODS))
    # Not a restx route, so restx's handler skips it: render its errors here, by
    # status code too, since Flask prefers a host's code handler to a class one.
    for code in (404, 405):
        blueprint.register_error_handler(code, handle_error)
