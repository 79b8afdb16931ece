"""The OpenAI-compatible adapter (vLLM, llama.cpp server, TGI): /v1/completions and friends."""

from __future__ import annotations

import base64
from typing import Any

from flask_inference_gateway.core.errors import BackendError, ValidationFailed
from flask_inference_gateway.core.pieces import Delta, Piece, ToolCall
from flask_inference_gateway.core.types import (
    OLLAMA_ONLY,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Message,
    Op,
    Probe,
    ResponseFormat,
    Timeouts,
    Usage,
)
from flask_inference_gateway.upstream.client import BackendClient
from flask_inference_gateway.upstream.stream import LineDecoder, TokenStream, parse_object
from flask_inference_gateway.upstream.translate import extras_for, linked, refuse, tool_body
from flask_inference_gateway.upstream.values import count, optional_text, text, vectors
from flask_inference_gateway.upstream.verbatim import OpenAIFrames

ENDPOINTS = {Op.GENERATE: "/v1/completions", Op.CHAT: "/v1/chat/completions"}


def usage_of(data: dict[str, Any] | None) -> Usage:
    """Return the token counts of an OpenAI ``usage`` object."""
    data = data or {}
    if not isinstance(data, dict):
        raise BackendError("The model backend sent a 'usage' that is not a JSON object.")
    return Usage(prompt_tokens=count(data.get("prompt_tokens"), "prompt_tokens"),
                 completion_tokens=count(data.get("completion_tokens"), "completion_tokens"))


def options_of(request: GenerationRequest) -> dict[str, Any]:
    """Return the request's options by OpenAI's names; refuse Ollama's own options."""
    options = request.options.to_dict()
    foreign = [name for name in OLLAMA_ONLY if name in options]
    if foreign:
        raise ValidationFailed(fields={"options": {name: [
            "Only Ollama backends take this option; the model is served by an "
            "OpenAI-compatible backend here."] for name in foreign}})
    # Every other gateway option has the same name here (top_k is an extension
    # that vLLM and llama.cpp accept).
    return options


def response_format_of(response_format: ResponseFormat) -> dict[str, Any]:
    """Return OpenAI's ``response_format`` for the gateway's structured-output request."""
    if response_format.schema is None:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": response_format.name, "schema": response_format.schema}
    if response_format.strict is not None:
        spec["strict"] = response_format.strict
    return {"type": "json_schema", "json_schema": spec}


# The first bytes of the image formats vision models take, and their media types.
IMAGE_SIGNATURES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                    (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def media_type(image: str) -> str:
    """Return the media type of a base64-encoded image (PNG when it is not recognised)."""
    head = base64.b64decode(image[:16] + "=" * (-len(image[:16]) % 4))
    return next((kind for magic, kind in IMAGE_SIGNATURES if head.startswith(magic)),
                "image/png")


def content_of(message: Message) -> Any:
    """Return a message's content: text, or text and image_url parts (data: URLs)."""
    if not message.images:
        return message.content if message.content or not message.tool_calls else None
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url",
               "image_url": {"url": f"data:{media_type(image)};base64,{image}"}}
              for image in message.images]
    return parts


def message_of(message: Message, ids: list[str], call_id: str, _tool_name: str) -> dict[str, Any]:
    """Return one message as OpenAI takes it, its calls' arguments as JSON text."""
    body: dict[str, Any] = {"role": message.role, "content": content_of(message)}
    if message.tool_calls:
        body["tool_calls"] = [{"id": ident, "type": "function",
                               "function": {"name": call.name,
                                            "arguments": call.arguments or "{}"}}
                              for ident, call in zip(ids, message.tool_calls, strict=True)]
    if message.role == "tool" and call_id:
        body["tool_call_id"] = call_id
    return body


# Ollama's think as OpenAI-compatible servers take it: a level is reasoning_effort; on or
# off is the chat template's switch (Qwen3's and DeepSeek's enable_thinking, which vLLM and
# llama.cpp pass to the template).
def thinking_of(think: bool | str) -> dict[str, Any]:
    """Return the fields that ask an OpenAI-compatible server to think (or not)."""
    if isinstance(think, str):
        return {"reasoning_effort": think}
    return {"chat_template_kwargs": {"enable_thinking": think}}


def chat_fields(request: GenerationRequest) -> dict[str, Any]:
    """Return what a chat body adds: messages, tools, thinking, log probabilities."""
    fields: dict[str, Any] = {"messages": [message_of(*m) for m in linked(request.messages)]}
    if request.tools:
        fields["tools"] = [tool_body(tool, strict=True) for tool in request.tools]
    choice = request.tool_choice
    if choice is not None:
        fields["tool_choice"] = (choice.mode if choice.mode != "function" else
                                 {"type": "function", "function": {"name": choice.name}})
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    if request.think is not None:
        fields.update(thinking_of(request.think))
    if request.logprobs:
        fields["logprobs"] = True
        if request.top_logprobs is not None:
            fields["top_logprobs"] = request.top_logprobs
    return fields


def prompt_fields(request: GenerationRequest) -> dict[str, Any]:
    """Return what a completions body adds: the prompt, led by the system prompt."""
    if request.images:
        raise ValidationFailed(fields={"images": [
            "An OpenAI-compatible backend takes images in chat only; send them in a "
            "chat message (Ollama backends take them here too)."]})
    if request.logprobs:
        raise refuse("openai", ["logprobs"], "An OpenAI-compatible backend gives log "
                     "probabilities in chat only.")
    if request.think is not None:
        raise refuse("openai", ["think"], "An OpenAI-compatible backend thinks in chat only.")
    # The completions API has no system prompt: it leads the prompt instead.
    system = request.system
    return {"prompt": f"{system}\n\n{request.prompt}" if system else request.prompt}


def build_payload(request: GenerationRequest) -> dict[str, Any]:
    """Translate a gateway request into an OpenAI request body, always streamed.

    ``keep_alive`` (Ollama's memory hint) has no meaning here and is left out.
    """
    extra_fields, _options = extras_for("openai", request)  # no options map here
    payload: dict[str, Any] = {**extra_fields, "model": request.model, "stream": True,
                               **options_of(request)}
    payload.update(chat_fields(request) if request.op is Op.CHAT else prompt_fields(request))
    if request.response_format is not None:
        payload["response_format"] = response_format_of(request.response_format)
    payload["stream_options"] = {"include_usage": True}
    return payload


def tool_calls_of(delta: dict[str, Any]) -> tuple[ToolCall, ...]:
    """Return the tool call fragments of a message or delta."""
    calls = delta.get("tool_calls")
    if not calls:
        return ()
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise BackendError("The model backend sent tool calls that are not JSON objects.")
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        index = call.get("index", position)
        if not isinstance(function, dict) or type(index) is not int:
            raise BackendError("The model backend sent a tool call that is not a function.")
        out.append(ToolCall(index, text(call.get("id"), "id"), text(function.get("name"), "name"),
                            text(function.get("arguments"), "arguments")))
    return tuple(out)


def choice_piece(choice: Any) -> Piece:
    """Return the piece of one choice: a chat message or delta, or a completion's text."""
    if not isinstance(choice, dict):
        raise BackendError("The model backend sent a choice that is not a JSON object.")
    message = choice.get("message") or choice.get("delta")
    if message is not None and not isinstance(message, dict):
        raise BackendError("The model backend sent a message that is not a JSON object.")
    if message is None:
        said = choice.get("text")
        return said if type(said) is str else text(said, "text")
    said = message.get("content")
    if type(said) is not str:
        said = text(said, "content")
    # vLLM and llama.cpp say reasoning_content; newer vLLM and Ollama's /v1, reasoning.
    thinking = message.get("reasoning_content") or message.get("reasoning")
    logprobs = choice.get("logprobs")
    logprobs = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not (thinking or logprobs or message.get("tool_calls")):
        return said
    if not isinstance(logprobs or [], list):
        raise BackendError("The model backend sent 'logprobs' that are not a list.")
    return Delta(said, text(thinking, "reasoning_content"), tool_calls_of(message),
                 tuple(logprobs or ()))


class StreamDecoder:
    """Decode one stream's SSE lines: ``data: {chunk}`` ... ``data: [DONE]``."""

    def __init__(self) -> None:
        self.done_reason: str | None = None
        self.usage = Usage()
        self.model: str | None = None
        self.final: dict[str, Any] = {}  # the backend's usage object and fingerprint

    def __call__(self, stream: TokenStream, line: bytes) -> Piece | None:
        """Return the piece in one SSE line; finish the stream on ``[DONE]``."""
        data = self.data_of(stream, line)
        return None if data is None else self.take(data)

    def data_of(self, stream: TokenStream, line: bytes) -> dict[str, Any] | None:
        """Return the chunk in one SSE line: None for other lines, and for ``[DONE]``,
        which finishes the stream."""
        if not line.startswith(b"data:"):
            return None  # comments, event names, ids
        payload = line[5:].strip()
        if payload == b"[DONE]":
            stream.finish(self.done_reason, self.usage, self.model, self.final)
            return None
        return parse_object(payload)

    def take(self, data: dict[str, Any]) -> Piece | None:
        """Note a chunk's model, usage and finish reason; return its piece."""
        self.model = self.model or optional_text(data.get("model"), "model")
        if data.get("usage"):
            self.usage = usage_of(data["usage"])
            # Its details (cached prompt tokens, reasoning tokens) go back to OpenAI clients.
            self.final["usage"] = data["usage"]
            if data.get("system_fingerprint"):
                self.final["system_fingerprint"] = data["system_fingerprint"]
        choices = data.get("choices") or []
        if not choices:
            return None
        piece = choice_piece(choices[0])
        self.done_reason = optional_text(choices[0].get("finish_reason"),
                                         "finish_reason") or self.done_reason
        return piece


class OpenAIBackend(BackendClient):
    """Call one OpenAI-compatible server; ``base_url`` with or without its ``/v1``."""

    kind = "openai"

    def __init__(self, base_url: str, *, timeouts: Timeouts, pool_size: int,
                 api_key: str = "") -> None:
        base_url = base_url.rstrip("/").removesuffix("/v1")
        super().__init__(base_url, timeouts=timeouts, pool_size=pool_size,
                         headers={"Authorization": f"Bearer {api_key}"} if api_key else None)

    def stream(self, request: GenerationRequest, deadline: float | None = None) -> TokenStream:
        """Start a streamed generation; the caller owns (closes) the returned stream."""
        decoder: LineDecoder = StreamDecoder()
        if request.passthrough == self.kind:  # an OpenAI client: the server's own chunks
            decoder = OpenAIFrames(decoder, request.include_usage)
        return self.post_stream(ENDPOINTS[request.op], build_payload(request), decoder,
                                request.model, deadline)

    def embed(self, request: EmbeddingRequest, deadline: float | None = None) -> Embeddings:
        """Return the embedding of each input (/v1/embeddings)."""
        inputs = list(request.inputs)
        data = self.post_whole("/v1/embeddings", {"model": request.model, "input": inputs},
                               deadline, self.timeouts.first_token)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != len(inputs):
            raise BackendError("The model backend answered /v1/embeddings without the "
                               "embeddings.")
        if not all(isinstance(item, dict) and type(item.get("index", 0)) is int
                   for item in items):
            raise BackendError("The model backend sent embeddings that are not JSON objects.")
        ordered = sorted(items, key=lambda item: item.get("index", 0))
        return Embeddings(optional_text(data.get("model"), "model") or request.model,
                          vectors([item.get("embedding") for item in ordered], "embedding"),
                          usage_of(data.get("usage")).prompt_tokens)

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Return the server's models (from /v1/models)."""
        timeout = timeout or self.timeouts.first_token
        body = self.get_json("/v1/models", (self.timeouts.connect, timeout))
        return [{"id": m.get("id", ""), "object": "model", "created": m.get("created") or 0,
                 "owned_by": m.get("owned_by") or "openai", "details": {}}
                for m in (body.get("data") if isinstance(body, dict) else None) or []]

    def probe(self, timeout: float) -> Probe:
        """Return the server's models; an OpenAI-compatible server has them all loaded."""
        models = self.list_models(timeout)
        return Probe(models, {m["id"] for m in models})
