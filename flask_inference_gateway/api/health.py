"""GET /healthz and /readyz: liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Response
from flask_restx import Namespace, Resource

from flask_inference_gateway.api.common import json_response, schema_model
from flask_inference_gateway.api.schemas import HealthBody, ReadyBody
from flask_inference_gateway.api.state import gateway

ns = Namespace("health", description="Liveness and readiness probes", path="/")


@ns.route("/healthz", doc={"security": []})
class Health(Resource):
    public = True  # no API key needed
    @ns.response(200, "The process serves requests", schema_model(ns, HealthBody))
    def get(self) -> Response:
        """Answer while the process is alive; never calls the backend."""
        return json_response({"status": "ok"})


@ns.route("/readyz", doc={"security": []})
class Ready(Resource):
    public = True
    @ns.response(200, "The backend answers", schema_model(ns, ReadyBody))
    @ns.response(503, "The backend does not answer; see backends[].error",
                 schema_model(ns, ReadyBody))
    def get(self) -> Response:
        """Answer 200 when the backend answers, 503 with the reason when it does not."""
        ready, backends = gateway().service.readiness()
        body = {"status": "ready" if ready else "not_ready", "backends": backends}
        return json_response(body, 200 if ready else 503)
