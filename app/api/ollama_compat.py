"""The Ollama-compatible API under /api: the official ``ollama`` clients work against the gateway.

Generation and embeddings go through the gateway's service (keys, model
permissions, budgets, routing over every backend, failover, admission,
metrics); the other routes are answered from the backends' native APIs (see
ollama_native.py). Errors take Ollama's shape, ``{"error": "message"}``
(app/errors.py picks it for every path under /api/).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response
from flask_restx import Namespace, Resource
from marshmallow import Schema

from app.api import ollama_native as native
from app.api.common import ERROR_STATUSES, json_response, load_with, schema_model
from app.api.ollama_wire import (
    NDJSON,
    OllamaLines,
    embed_answer,
    loaded_answer,
    only_loads,
    to_gateway,
    whole_answer,
)
from app.errors import Forbidden
from app.schemas.ollama import (
    OllamaChatRequest,
    OllamaChatResponse,
    OllamaCopyRequest,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaError,
    OllamaGenerateRequest,
    OllamaGenerateResponse,
    OllamaModelRequest,
    OllamaModels,
    OllamaStatus,
    OllamaVersion,
)
from app.security.auth import current_principal
from app.sse import sse_response
from app.state import gateway

ns = Namespace("ollama", path="/api",
               description="Ollama-compatible API: NDJSON streams, Ollama's field names and "
                           "errors; model management for admin keys")
SCHEMAS: dict[str, Schema] = {"generate": OllamaGenerateRequest(), "chat": OllamaChatRequest(),
                              "embed": OllamaEmbedRequest(), "show": OllamaModelRequest()}
STREAMED = ("NDJSON lines (application/x-ndjson) unless stream is false: one per piece, then "
            "a last line with done: true, done_reason and counts; a failure mid-stream is an "
            '{"error": ...} line. Backend silence sends a line with empty text.')
ERRORS = {**{status: text for status, text in ERROR_STATUSES.items() if status != 422},
          400: "Malformed or invalid body (unsupported fields and options), or the backend "
               "rejected the request",
          403: "The API key may not use this model, or is no admin key (model management)"}


def errors(func: Any) -> Any:
    """Document the error answers of a route, in Ollama's shape."""
    error_model = schema_model(ns, OllamaError)
    for status, text in ERRORS.items():
        func = ns.response(status, text, error_model)(func)
    return func


def generation(kind: str) -> Response:
    """Serve an Ollama generate or chat request through the gateway's service."""
    started = time.monotonic()
    body = load_with(SCHEMAS[kind])
    state = gateway()
    request = to_gateway(kind, body, state.config["GATEWAY_MAX_TOKENS"])
    principal = current_principal()
    if only_loads(request):
        model = request.get("model") or state.service.default_model
        if not principal.may_use(model):
            raise Forbidden(f"This API key may not use the model '{model}'.")
        return json_response(loaded_answer(kind, model, body.get("keep_alive")))
    if not body["stream"]:
        completion = state.service.complete(kind, request, principal)
        return json_response(whole_answer(kind, completion, started))
    stream = state.service.stream(kind, request, principal)
    lines = OllamaLines(kind, request["model"], started)
    return sse_response(stream, state.heartbeat_seconds, lines, ping=lines.heartbeat,
                        mimetype=NDJSON)


@ns.route("/generate")
class ApiGenerate(Resource):
    @ns.expect(schema_model(ns, OllamaGenerateRequest))
    @ns.doc(produces=[NDJSON, "application/json"])
    @ns.response(200, STREAMED, schema_model(ns, OllamaGenerateResponse))
    @errors
    def post(self) -> Response:
        """Complete a prompt (Ollama's /api/generate)."""
        return generation("generate")


@ns.route("/chat")
class ApiChat(Resource):
    @ns.expect(schema_model(ns, OllamaChatRequest))
    @ns.doc(produces=[NDJSON, "application/json"])
    @ns.response(200, STREAMED, schema_model(ns, OllamaChatResponse))
    @errors
    def post(self) -> Response:
        """Answer a conversation (Ollama's /api/chat)."""
        return generation("chat")


@ns.route("/embed")
class ApiEmbed(Resource):
    @ns.expect(schema_model(ns, OllamaEmbedRequest))
    @ns.response(200, "One vector per input", schema_model(ns, OllamaEmbedResponse))
    @errors
    def post(self) -> Response:
        """Embed texts (Ollama's /api/embed)."""
        started = time.monotonic()
        body = load_with(SCHEMAS["embed"])
        request = {"model": body.get("model") or "", "input": body["input"]}
        embeddings = gateway().service.embed(request, current_principal())
        return json_response(embed_answer(embeddings, started))


@ns.route("/tags")
class ApiTags(Resource):
    @ns.response(200, "Every backend's models", schema_model(ns, OllamaModels))
    @errors
    def get(self) -> Response:
        """List the models every healthy backend serves (cached like /v1/models)."""
        return json_response(native.tags())


@ns.route("/ps")
class ApiProcesses(Resource):
    @ns.response(200, "Models in the Ollama backends' memory", schema_model(ns, OllamaModels))
    @errors
    def get(self) -> Response:
        """List the models the Ollama backends hold in memory."""
        return json_response(native.processes())


@ns.route("/version")
class ApiVersion(Resource):
    @ns.response(200, "The version", schema_model(ns, OllamaVersion))
    @errors
    def get(self) -> Response:
        """Return the first Ollama backend's version (else the gateway's)."""
        return json_response(native.version())


@ns.route("/show")
class ApiShow(Resource):
    @ns.expect(schema_model(ns, OllamaModelRequest))
    @ns.response(200, "The backend's /api/show answer")
    @errors
    def post(self) -> Response:
        """Describe a model: a backend that has it answers."""
        return json_response(native.show(load_with(SCHEMAS["show"]), current_principal()))


PROGRESS = ("Progress NDJSON lines of each Ollama backend in turn, or (stream false) one "
            "status object")
# Model management (admin keys only): method, path, body schema, what a success is.
MANAGEMENT = (("POST", "/api/pull", OllamaModelRequest, PROGRESS),
              ("POST", "/api/push", OllamaModelRequest, PROGRESS),
              ("POST", "/api/create", OllamaModelRequest, PROGRESS),
              ("POST", "/api/copy", OllamaCopyRequest, "Copied on every backend that has it"),
              ("DELETE", "/api/delete", OllamaModelRequest, "Deleted wherever it was"))


def management_route(method: str, path: str, schema: type[Schema], success: str) -> None:
    """Add a route that forwards model management to the Ollama backends (admin keys only)."""
    loader = schema()

    def view(_resource: Resource) -> Response:
        return native.manage(method, path, load_with(loader), current_principal())

    view.__doc__ = f"Run {path} on the Ollama backends (admin keys only)."
    status_model = schema_model(ns, OllamaStatus) if success is PROGRESS else None
    view = errors(ns.response(200, success, status_model)(
        ns.expect(schema_model(ns, schema))(view)))
    name = "Api" + path.rsplit("/", 1)[1].capitalize()
    ns.route(path.removeprefix("/api"))(type(name, (Resource,), {method.lower(): view}))


for route in MANAGEMENT:
    management_route(*route)
