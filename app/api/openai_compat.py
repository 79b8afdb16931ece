"""POST /v1/chat/completions, /v1/completions and /v1/embeddings: OpenAI's API.

The requests go through the same service, router and backends as the gateway's
own routes: an Ollama backend is translated, an OpenAI-compatible one is
called in its own format. GET /v1/models (app/api/models.py) already answers
in OpenAI's list shape. Errors on these routes take OpenAI's shape: the views
are marked with ``openai_errors`` and ``app/errors.py`` renders accordingly.
"""

from __future__ import annotations

from functools import cache

from flask import Response
from flask_restx import Namespace, Resource
from marshmallow import Schema

from app.api.common import document_errors, json_response, load_with, schema_model
from app.api.openai_wire import OpenAIChunks, completion_body, embedding_body
from app.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAICall,
    OpenAICompletion,
    OpenAIEmbeddingList,
    OpenAIErrorResponse,
)
from app.security.auth import current_principal
from app.sse import sse_response
from app.state import gateway

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

    openai_errors = True


@cache
def schema_for(cls: type[Schema], **settings: int) -> Schema:
    """Return the one instance of ``cls`` with these settings (building one is not cheap)."""
    return cls(**settings)


def load_call(cls: type[Schema]) -> OpenAICall:
    """Load the body of a generating route into the gateway's request."""
    return load_with(schema_for(cls, max_tokens_limit=gateway().config["GATEWAY_MAX_TOKENS"]))


def answer(call: OpenAICall) -> Response:
    """Run a generating call: a whole JSON object, or a stream of SSE chunks."""
    state = gateway()
    if call.stream:
        stream = state.service.stream(call.kind, call.request, current_principal())
        chunks = OpenAIChunks(call.kind, stream.model, call.include_usage)
        return sse_response(stream, state.heartbeat_seconds, chunks)
    completion = state.service.complete(call.kind, call.request, current_principal())
    return json_response(completion_body(call.kind, completion))


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
        call: OpenAICall = load_with(schema_for(EmbeddingRequest))
        embeddings = gateway().service.embed(call.request, current_principal())
        return json_response(embedding_body(embeddings, call.encoding))
