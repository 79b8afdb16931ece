"""POST /v1/generate and /v1/chat (whole answers) and their /stream variants (SSE)."""

from __future__ import annotations

from flask import Response, request
from flask_restx import Namespace, Resource

from flask_inference_gateway.api.auth import current_principal
from flask_inference_gateway.api.common import (
    document_errors,
    json_response,
    load_with,
    schema_model,
)
from flask_inference_gateway.api.native.schemas import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationOptions,
    StreamEvent,
)
from flask_inference_gateway.api.native.wire import GatewayEvents, whole_answer
from flask_inference_gateway.api.relay import stream_response
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.worker import client_probe

ns = Namespace("completions", description="Whole answers, returned when the model is done",
               path="/v1")
streaming = Namespace("streaming", description="Token streams as server-sent events", path="/v1")
errors = document_errors(ns)
stream_errors = document_errors(streaming)
EVENTS = ("Server-sent events: `data: {\"text\": ...}` per piece, then "
          "`data: {\"done\": true, \"done_reason\": ..., \"usage\": {...}}`. A failure after the "
          "stream started is `event: error` with `data: {\"error\": {...}}`. A `: ping` comment "
          "is sent after GATEWAY_HEARTBEAT_SECONDS of backend silence. The schema is that of "
          "one event's data.")


def answer(schema: type[GenerationOptions]) -> Response:
    """Validate the body and answer it whole."""
    state = gateway()
    generation = load_with(schema, max_tokens_limit=state.settings.max_tokens)
    completion = state.service.complete(generation, current_principal(),
                                        client_probe(request.environ))
    return json_response(whole_answer(generation.op, completion))


def stream(schema: type[GenerationOptions]) -> Response:
    """Validate the body, open the upstream stream and relay it as SSE."""
    state = gateway()
    generation = load_with(schema, max_tokens_limit=state.settings.max_tokens)
    principal, gone = current_principal(), client_probe(request.environ)
    return stream_response(lambda: state.service.stream(generation, principal, gone),
                           lambda _stream: GatewayEvents(), state.settings.heartbeat_seconds)


@ns.route("/generate")
class Generate(Resource):
    @ns.expect(schema_model(ns, GenerateRequest))
    @ns.response(200, "The whole completion", schema_model(ns, GenerateResponse))
    @errors
    def post(self) -> Response:
        """Complete a prompt."""
        return answer(GenerateRequest)


@ns.route("/chat")
class Chat(Resource):
    @ns.expect(schema_model(ns, ChatRequest))
    @ns.response(200, "The assistant's whole message", schema_model(ns, ChatResponse))
    @errors
    def post(self) -> Response:
        """Answer a conversation."""
        return answer(ChatRequest)


@streaming.route("/generate/stream")
class GenerateStream(Resource):
    @streaming.expect(schema_model(streaming, GenerateRequest))
    @streaming.doc(produces=["text/event-stream"])
    @streaming.response(200, EVENTS, schema_model(streaming, StreamEvent))
    @stream_errors
    def post(self) -> Response:
        """Complete a prompt, streaming the pieces."""
        return stream(GenerateRequest)


@streaming.route("/chat/stream")
class ChatStream(Resource):
    @streaming.expect(schema_model(streaming, ChatRequest))
    @streaming.doc(produces=["text/event-stream"])
    @streaming.response(200, EVENTS, schema_model(streaming, StreamEvent))
    @stream_errors
    def post(self) -> Response:
        """Answer a conversation, streaming the pieces."""
        return stream(ChatRequest)
