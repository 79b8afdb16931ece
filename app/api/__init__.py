"""The HTTP surface: one flask-restx Namespace per module, served from one Blueprint."""

from __future__ import annotations

from flask import Blueprint, Response
from flask_restx import Api

from app.api import completions, health, metrics, models, streaming
from app.errors import handle_error

NAMESPACES = (completions.ns, streaming.ns, models.ns, health.ns, metrics.ns)
# Swagger 2.0 has no bearer scheme: an apiKey in the Authorization header lets
# Swagger UI's "Authorize" button send "Bearer <key>" (X-API-Key works too).
AUTHORIZATIONS = {"bearer": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "Enter 'Bearer <your API key>'."}}


class GatewayApi(Api):
    """A restx Api whose errors take the gateway's one JSON shape."""

    def handle_error(self, e: Exception) -> Response:
        """Render every error raised in the gateway's routes."""
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
    return blueprint
