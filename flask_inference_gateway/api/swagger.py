"""Turn the marshmallow schemas into Swagger 2.0 definitions for flask-restx.

The schemas stay the single source of truth: flask-restx receives the JSON
Schema that apispec derives from them, never a hand-written copy.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from flask_inference_gateway.api import schemas as status
from flask_inference_gateway.api.native import schemas as inference
from flask_inference_gateway.api.ollama import answers as ollama_answers
from flask_inference_gateway.api.ollama import schemas as ollama
from flask_inference_gateway.api.openai import answers
from flask_inference_gateway.api.openai import schemas as openai

DOCUMENTED: tuple[type[Schema], ...] = (
    inference.GenerateRequest, inference.ChatRequest, inference.GenerateResponse,
    inference.ChatResponse, inference.StreamEvent, inference.ErrorResponse,
    status.ModelList, status.ModelInfo, status.HealthBody, status.ReadyBody,
    openai.ChatCompletionRequest, openai.CompletionRequest, openai.EmbeddingRequest,
    answers.OpenAICompletion, answers.OpenAIEmbeddingList, answers.OpenAIErrorResponse,
    ollama.OllamaGenerateRequest, ollama.OllamaChatRequest, ollama.OllamaEmbedRequest,
    ollama.OllamaModelRequest, ollama.OllamaCopyRequest, ollama_answers.OllamaGenerateResponse,
    ollama_answers.OllamaChatResponse, ollama_answers.OllamaEmbedResponse,
    ollama_answers.OllamaModels, ollama_answers.OllamaVersion, ollama_answers.OllamaStatus,
    ollama_answers.OllamaError,
)


def inline_nested(_schema: Any) -> None:
    """Tell apispec to inline nested schemas, so each definition stands alone."""
    return None


@cache
def definitions() -> dict[str, dict[str, Any]]:
    """Return the Swagger 2.0 definition of every documented schema, by class name."""
    spec = APISpec(title="gateway", version="1", openapi_version="2.0",
                   plugins=[MarshmallowPlugin(schema_name_resolver=inline_nested)])
    for schema in DOCUMENTED:
        spec.components.schema(schema.__name__, schema=schema)
    return spec.to_dict()["definitions"]
