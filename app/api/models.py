"""GET /v1/models: the models the backend serves."""

from __future__ import annotations

from flask import Response
from flask_restx import Namespace, Resource

from app.api.common import json_response, schema_model
from app.schemas.inference import ErrorResponse
from app.schemas.status import ModelList
from app.state import gateway

ns = Namespace("models", description="Models the backend serves", path="/v1")


@ns.route("/models")
class Models(Resource):
    @ns.response(200, "The served models", schema_model(ns, ModelList))
    @ns.response(401, "Missing or invalid API key", schema_model(ns, ErrorResponse))
    @ns.response(429, "Request-rate limit reached", schema_model(ns, ErrorResponse))
    @ns.response(502, "Backend unreachable or failed", schema_model(ns, ErrorResponse))
    @ns.response(504, "Backend timed out", schema_model(ns, ErrorResponse))
    def get(self) -> Response:
        """List the served models (cached for GATEWAY_MODELS_CACHE_SECONDS)."""
        return json_response({"object": "list", "data": gateway().service.models()})
