"""GET /v1/models and /v1/models/<id>: the models the backends serve."""

from __future__ import annotations

from flask import Response
from flask_restx import Namespace, Resource

from flask_inference_gateway.api.common import json_response, schema_model
from flask_inference_gateway.api.native.schemas import ErrorResponse
from flask_inference_gateway.api.schemas import ModelInfo, ModelList
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.errors import ModelNotFound

ns = Namespace("models", description="Models the backends serve", path="/v1")


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


@ns.route("/models/<path:model_id>")
@ns.param("model_id", "Model name, e.g. llama3.2 or llama3.2:latest")
class Model(Resource):
    @ns.response(200, "The model", schema_model(ns, ModelInfo))
    @ns.response(404, "No backend serves it", schema_model(ns, ErrorResponse))
    def get(self, model_id: str) -> Response:
        """Describe one served model (OpenAI's models.retrieve)."""
        for model in gateway().service.models():
            if model_id in (model["id"], model["id"].removesuffix(":latest")):
                return json_response(model)
        raise ModelNotFound(f"No backend serves the model '{model_id}'; see GET /v1/models.")
