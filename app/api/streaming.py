"""POST /v1/generate/stream and /v1/chat/stream: relay each piece as it is generated."""

from __future__ import annotations

from flask import Response
from flask_restx import Namespace, Resource

from app.api.common import document_errors, load_body, schema_model
from app.schemas.inference import ChatRequest, GenerateRequest, StreamEvent
from app.security.auth import current_principal
from app.sse import sse_response
from app.state import gateway

ns = Namespace("streaming", description="Token streams as server-sent events", path="/v1")
errors = document_errors(ns)
EVENTS = ("Server-sent events: `data: {\"text\": ...}` per piece, then "
          "`data: {\"done\": true, \"done_reason\": ..., \"usage\": {...}}`. A failure after the "
          "stream started is `event: error` with `data: {\"error\": {...}}`. A `: ping` comment "
          "is sent after GATEWAY_HEARTBEAT_SECONDS of backend silence. The schema is that of "
          "one event's data.")


def stream_response(kind: str) -> Response:
    """Validate the body, start the upstream stream and relay it as SSE."""
    state = gateway()
    stream = state.service.stream(kind, load_body(kind), current_principal())
    return sse_response(stream, state.heartbeat_seconds)


@ns.route("/generate/stream")
class GenerateStream(Resource):
    @ns.expect(schema_model(ns, GenerateRequest))
    @ns.doc(produces=["text/event-stream"])
    @ns.response(200, EVENTS, schema_model(ns, StreamEvent))
    @errors
    def post(self) -> Response:
        """Complete a prompt, streaming the pieces."""
        return stream_response("generate")


@ns.route("/chat/stream")
class ChatStream(Resource):
    @ns.expect(schema_model(ns, ChatRequest))
    @ns.doc(produces=["text/event-stream"])
    @ns.response(200, EVENTS, schema_model(ns, StreamEvent))
    @errors
    def post(self) -> Response:
        """Answer a conversation, streaming the pieces."""
        return stream_response("chat")
