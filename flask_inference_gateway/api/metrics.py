"""GET /metrics: Prometheus metrics, summed over every worker."""

from __future__ import annotations

import hmac

from flask import Response, request
from flask_restx import Namespace, Resource

from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.errors import Unauthorized
from flask_inference_gateway.observability.metrics import exposition

ns = Namespace("metrics", description="Prometheus metrics", path="/")


@ns.route("/metrics", doc={"security": []})
class Metrics(Resource):
    public = True  # API keys do not apply; GATEWAY_METRICS_TOKEN may

    @ns.doc(produces=["text/plain"])
    @ns.response(200, "Prometheus text exposition format")
    @ns.response(401, "GATEWAY_METRICS_TOKEN is set and the request did not carry it")
    def get(self) -> Response:
        """Return the gateway's metrics in Prometheus' text format."""
        token = gateway().settings.metrics_token
        if token:
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(sent.encode(), token.encode()):
                raise Unauthorized("Send the metrics token as 'Authorization: Bearer <token>'.")
        body, content_type = exposition()
        return Response(body, content_type=content_type)
