"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: OpenAI's API.

The requests go through the same service, router and backends as the gateway's
own routes: an Ollama backend is translated, an OpenAI-compatible one is
called in its own format. GET /v1/models (api/models.py) already answers in
OpenAI's list shape. Errors on these routes take OpenAI's shape: the views
declare ``dialect = "openai"`` and ``api/errors.py`` renders accordingly.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Response, request
from flask_restx import Namespace, Resource

from flask_inference_gateway.api.auth import current_principal
from flask_inference_gateway.api.common import (
    document_errors,
    json_response,
    load_with,
    schema_model,
)
from flask_inference_gateway.api.openai.answers import (
    OpenAICompletion,
    OpenAIEmbeddingList,
    OpenAIErrorResponse,
)
from flask_inference_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Sampling,
)
from flask_inference_gateway.api.openai.wire import completion_body, embedding_body, encoder_for
from flask_inference_gateway.api.relay import stream_response
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.types import GenerationRequest
from flask_inference_gateway.worker import client_probe

ns = Namespace("openai", path="/v1",
               description="OpenAI-compatible API: chat completions, completions, embeddings "
                           "(GET /v1/models serves both APIs)")
errors = document_errors(ns, OpenAIErrorResponse)
ANSWERS = ("The whole object, or with \"stream\": true server-sent events: one `data: {chunk}` "
           "per piece, a last chunk with finish_reason, a usage chunk when "
           "stream_options.include_usage is true, then `data: [DONE]`. A failure after the "
           "stream started is `data: {\"error\": {...}}` before [DONE].")


class OpenAIResource(Resource):
    """A route whose errors, even those raised before the view, take OpenAI's shape."""

    dialect = "openai"


def load_call(schema: type[Sampling]) -> GenerationRequest:
    """Load the body of a generating route into the gateway's request."""
    return load_with(schema, max_tokens_limit=gateway().settings.max_tokens)


def answer(generation: GenerationRequest) -> Response:
    """Run a generating call: a whole JSON object, or a stream of SSE chunks."""
    state = gateway()
    principal, gone = current_principal(), client_probe(request.environ)
    if generation.stream:
        if state.settings.stream_passthrough:
            generation = replace(generation, passthrough="openai")
        return stream_response(
            lambda: state.service.stream(generation, principal, gone),
            lambda stream: encoder_for(generation.op, stream, generation.include_usage),
            state.settings.heartbeat_seconds)
    completion = state.service.complete(generation, principal, gone)
    return json_response(completion_body(generation.op, completion))


@ns.route("/chat/completions")
class ChatCompletions(OpenAIResource):
    @ns.expect(schema_model(ns, ChatCompletionRequest))
    @ns.doc(produces=["application/json", "text/event-stream"])
    @ns.response(200, ANSWERS, schema_model(ns, OpenAICompletion))
    @errors
    def post(self) -> Response:
        """Answer a conversation (OpenAI's chat completions)."""
        return answer(load_call(ChatCompletionRequest))


@ns.route("/completions")
class Completions(OpenAIResource):
    @ns.expect(schema_model(ns, CompletionRequest))
    @ns.doc(produces=["application/json", "text/event-stream"])
    @ns.response(200, ANSWERS, schema_model(ns, OpenAICompletion))
    @errors
    def post(self) -> Response:
        """Complete a prompt (OpenAI's legacy completions)."""
        return answer(load_call(CompletionRequest))


@ns.route("/embeddings")
class Embeddings(OpenAIResource):
    @ns.expect(schema_model(ns, EmbeddingRequest))
    @ns.response(200, "One vector per input", schema_model(ns, OpenAIEmbeddingList))
    @errors
    def post(self) -> Response:
        """Embed a string or a list of strings."""
        embedding = load_with(EmbeddingRequest)
        embeddings = gateway().service.embed(embedding, current_principal(),
                                             client_probe(request.environ))
        return json_response(embedding_body(embeddings, embedding.encoding))
