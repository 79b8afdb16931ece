"""POST /v1/generate and /v1/chat: answer when the model is done."""

from __future__ import annotations

from flask import Response
from flask_restx import Namespace, Resource

from app.api.common import (
    completion_fields,
    document_errors,
    json_response,
    load_body,
    schema_model,
)
from app.schemas.inference import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse
from app.security.auth import current_principal
from app.state import gateway

ns = Namespace("completions", description="Whole answers, returned when the model is done",
               path="/v1")
errors = document_errors(ns)


@ns.route("/generate")
class Generate(Resource):
    @ns.expect(schema_model(ns, GenerateRequest))
    @ns.response(200, "The whole completion", schema_model(ns, GenerateResponse))
    @errors
    def post(self) -> Response:
        """Complete a prompt."""
        request = load_body("generate")
        completion = gateway().service.complete("generate", request, current_principal())
        return json_response({**completion_fields(completion, "gen"), "text": completion.text})


@ns.route("/chat")
class Chat(Resource):
    @ns.expect(schema_model(ns, ChatRequest))
    @ns.response(200, "The assistant's whole message", schema_model(ns, ChatResponse))
    @errors
    def post(self) -> Response:
        """Answer a conversation."""
        request = load_body("chat")
        completion = gateway().service.complete("chat", request, current_principal())
        message = {"role": "assistant", "content": completion.text}
        return json_response({**completion_fields(completion, "chat"), "message": message})
