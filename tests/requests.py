"""Typed requests from the short dictionaries the tests write."""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.types import (
    Completion,
    EmbeddingRequest,
    GenerationRequest,
    Message,
    Op,
    Options,
)


def typed(kind: str, request: dict[str, Any]) -> GenerationRequest:
    """Return the GenerationRequest for a ``generate`` or ``chat`` dictionary."""
    stop = request.get("stop")
    options = Options(max_tokens=request.get("max_tokens", 256),
                      temperature=request.get("temperature"), top_p=request.get("top_p"),
                      top_k=request.get("top_k"),
                      stop=tuple(stop) if stop is not None else None, seed=request.get("seed"))
    messages = tuple(Message(m["role"], m["content"]) for m in request.get("messages", ()))
    return GenerationRequest(Op(kind), options, model=request.get("model") or "",
                             prompt=request.get("prompt", ""), system=request.get("system"),
                             messages=messages)


def embedding(model: str, inputs: list[str]) -> EmbeddingRequest:
    """Return the EmbeddingRequest of ``inputs`` for ``model``."""
    return EmbeddingRequest(tuple(inputs), model=model)


def whole(backend: Any, request: GenerationRequest) -> Completion:
    """Return the whole answer of ``request``, streamed from ``backend`` as the service does."""
    with backend.stream(request) as stream:
        stream.prime()
        return stream.collect()
