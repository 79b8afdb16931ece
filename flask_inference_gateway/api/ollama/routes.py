"""The Ollama-compatible API under /api: the official ``ollama`` clients work against the gateway.

Generation and embeddings go through the gateway's service (keys, model
permissions, budgets, routing over every backend, failover, admission,
metrics); the other routes are answered from the backends' native APIs (see
management.py). Errors take Ollama's shape, ``{"error": "message"}``
(``api/errors.py`` picks it for every path under /api/).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from flask import Response, request
from flask_restx import Namespace, Resource
from marshmallow import Schema

from flask_inference_gateway.api.auth import current_principal
from flask_inference_gateway.api.common import (
    ERROR_STATUSES,
    json_response,
    load_with,
    schema_model,
)
from flask_inference_gateway.api.ollama import management
from flask_inference_gateway.api.ollama.answers import (
    OllamaChatResponse,
    OllamaEmbedResponse,
    OllamaError,
    OllamaGenerateResponse,
    OllamaModels,
    OllamaStatus,
    OllamaVersion,
)
from flask_inference_gateway.api.ollama.schemas import (
    OllamaChatRequest,
    OllamaCopyRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModelRequest,
    OllamaRequest,
)
from flask_inference_gateway.api.ollama.wire import (
    NDJSON,
    embed_answer,
    encoder_for,
    loaded_answer,
    unloads,
    whole_answer,
)
from flask_inference_gateway.api.relay import stream_response
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.worker import client_probe

ns = Namespace("ollama", path="/api",
               description="Ollama-compatible API: NDJSON streams, Ollama's field names and "
                           "errors; model management for admin keys")
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


def load_body(schema: type[Schema], **settings: Any) -> Any:
    """Load the body with ``schema``, read as JSON whatever its Content-Type, as Ollama does."""
    # Ollama's own docs post with `curl -d`, which labels the JSON a form. A
    # browser's request carries an Origin and must still say JSON: a web page
    # can then reach the gateway only after a CORS preflight, never with a
    # plain cross-site form post (which matters where auth is disabled).
    return load_with(schema, any_type=request.origin is None, **settings)


def generation(schema: type[OllamaRequest]) -> Response:
    """Serve an Ollama generate or chat request through the gateway's service."""
    started = time.monotonic()
    state = gateway()
    generation = load_body(schema, max_tokens_limit=state.settings.max_tokens)
    principal, gone = current_principal(), client_probe(request.environ)
    if generation.empty:  # Ollama: only load (or, keep_alive 0, unload) the model
        model = state.service.resolve_model(generation.model, principal)
        # A backend loads a model on its first request anyway; an unload frees
        # GPU memory now, so it goes to every backend that may hold the model.
        if unloads(generation.keep_alive):
            management.unload(model)
        return json_response(loaded_answer(generation.op, model, generation.keep_alive))
    if not generation.stream:
        completion = state.service.complete(generation, principal, gone)
        return json_response(whole_answer(generation.op, completion, started))
    if state.settings.stream_passthrough:
        generation = replace(generation, passthrough="ollama")
    return stream_response(lambda: state.service.stream(generation, principal, gone),
                           lambda stream: encoder_for(generation.op, stream, started),
                           state.settings.heartbeat_seconds, mimetype=NDJSON)


@ns.route("/generate")
class ApiGenerate(Resource):
    @ns.expect(schema_model(ns, OllamaGenerateRequest))
    @ns.doc(produces=[NDJSON, "application/json"])
    @ns.response(200, STREAMED, schema_model(ns, OllamaGenerateResponse))
    @errors
    def post(self) -> Response:
        """Complete a prompt (Ollama's /api/generate)."""
        return generation(OllamaGenerateRequest)


@ns.route("/chat")
class ApiChat(Resource):
    @ns.expect(schema_model(ns, OllamaChatRequest))
    @ns.doc(produces=[NDJSON, "application/json"])
    @ns.response(200, STREAMED, schema_model(ns, OllamaChatResponse))
    @errors
    def post(self) -> Response:
        """Answer a conversation (Ollama's /api/chat)."""
        return generation(OllamaChatRequest)


@ns.route("/embed")
class ApiEmbed(Resource):
    @ns.expect(schema_model(ns, OllamaEmbedRequest))
    @ns.response(200, "One vector per input", schema_model(ns, OllamaEmbedResponse))
    @errors
    def post(self) -> Response:
        """Embed texts (Ollama's /api/embed)."""
        started = time.monotonic()
        embedding = load_body(OllamaEmbedRequest)
        embeddings = gateway().service.embed(embedding, current_principal(),
                                             client_probe(request.environ))
        return json_response(embed_answer(embeddings, started))


@ns.route("/tags")
class ApiTags(Resource):
    @ns.response(200, "Every backend's models", schema_model(ns, OllamaModels))
    @errors
    def get(self) -> Response:
        """List the models every healthy backend serves (cached like /v1/models)."""
        return json_response(management.tags())


@ns.route("/ps")
class ApiProcesses(Resource):
    @ns.response(200, "Models in the Ollama backends' memory", schema_model(ns, OllamaModels))
    @errors
    def get(self) -> Response:
        """List the models the Ollama backends hold in memory."""
        return json_response(management.processes())


@ns.route("/version")
class ApiVersion(Resource):
    @ns.response(200, "The version", schema_model(ns, OllamaVersion))
    @errors
    def get(self) -> Response:
        """Return the first Ollama backend's version (else the gateway's)."""
        return json_response(management.version())


@ns.route("/show")
class ApiShow(Resource):
    @ns.expect(schema_model(ns, OllamaModelRequest))
    @ns.response(200, "The backend's /api/show answer")
    @errors
    def post(self) -> Response:
        """Describe a model: a backend that has it answers."""
        return json_response(management.show(load_body(OllamaModelRequest), current_principal()))


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
    def view(_resource: Resource) -> Response:
        return management.manage(method, path, load_body(schema), current_principal())

    view.__doc__ = f"Run {path} on the Ollama backends (admin keys only)."
    status_model = schema_model(ns, OllamaStatus) if success is PROGRESS else None
    view = errors(ns.response(200, success, status_model)(
        ns.expect(schema_model(ns, schema))(view)))
    name = "Api" + path.rsplit("/", 1)[1].capitalize()
    ns.route(path.removeprefix("/api"))(type(name, (Resource,), {method.lower(): view}))


for route in MANAGEMENT:
    management_route(*route)
