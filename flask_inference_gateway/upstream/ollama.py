"""The Ollama adapter: gateway requests in, Ollama's native API out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import requests

from flask_inference_gateway.core.errors import BackendError
from flask_inference_gateway.core.pieces import Delta, Piece, ToolCall
from flask_inference_gateway.core.types import (
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Message,
    Op,
    Probe,
    Timeouts,
    Usage,
)
from flask_inference_gateway.upstream.client import BackendClient
from flask_inference_gateway.upstream.http import (
    abort_response,
    prepare,
    raise_for_status,
    send,
    translate_errors,
)
from flask_inference_gateway.upstream.stream import TokenStream, parse_object
from flask_inference_gateway.upstream.translate import extras_for, linked, refuse, tool_body
from flask_inference_gateway.upstream.values import count, optional_text, text, vectors
from flask_inference_gateway.upstream.verbatim import OllamaFrames

# Gateway option name -> Ollama option name.
OPTION_NAMES = {"max_tokens": "num_predict", "temperature": "temperature", "top_p": "top_p",
                "top_k": "top_k", "stop": "stop", "seed": "seed",
                "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                "repeat_penalty": "repeat_penalty", "num_ctx": "num_ctx"}
ENDPOINTS = {Op.GENERATE: "/api/generate", Op.CHAT: "/api/chat"}


def usage_of(data: dict[str, Any]) -> Usage:
    """Return the token counts in Ollama's final object."""
    return Usage(prompt_tokens=count(data.get("prompt_eval_count"), "prompt_eval_count"),
                 completion_tokens=count(data.get("eval_count"), "eval_count"))


class LineDecoder:
    """Decode one stream's NDJSON lines; Ollama sends each tool call whole."""

    def __init__(self) -> None:
        self.calls = 0  # tool calls so far: the index of the next one

    def __call__(self, stream: TokenStream, line: bytes) -> Piece | None:
        """Return the piece in one line; record the usage on the final one."""
        return self.take(stream, parse_object(line))

    def take(self, stream: TokenStream, data: dict[str, Any]) -> Piece | None:
        """Return the piece of one decoded line; finish the stream on the final one."""
        if data.get("done"):
            stream.finish(optional_text(data.get("done_reason"), "done_reason"),
                          usage_of(data), optional_text(data.get("model"), "model"), data)
        message = data.get("message")
        if message is None:  # /api/generate
            part, said = data, data.get("response")
        elif type(message) is dict:
            part, said = message, message.get("content")
        else:
            raise BackendError("The model backend sent a message that is not a JSON object.")
        if type(said) is not str:  # a token's line: one type test, the rest only if odd
            said = text(said, "content" if message else "response")
        # A plain token's line pays three dict lookups more than it did before tools.
        if "thinking" not in part and "tool_calls" not in part and "logprobs" not in data:
            return said
        thinking, calls, logprobs = part.get("thinking"), part.get("tool_calls"), data.get(
            "logprobs")
        if not (thinking or calls or logprobs):
            return said
        if not isinstance(logprobs or [], list):
            raise BackendError("The model backend sent 'logprobs' that are not a list.")
        return Delta(said, text(thinking, "thinking"), self.tool_calls(calls),
                     tuple(logprobs or ()))

    def tool_calls(self, calls: Any) -> tuple[ToolCall, ...]:
        """Return Ollama's tool calls with OpenAI's JSON-text arguments and an id each."""
        if not calls:
            return ()
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise BackendError("The model backend sent tool calls that are not JSON objects.")
        out = []
        for call in calls:
            function = call.get("function") or {}
            if not isinstance(function, dict):
                raise BackendError("The model backend sent a tool call that is not a function.")
            arguments = function.get("arguments")
            out.append(ToolCall(self.calls,
                                text(call.get("id"), "id") or f"call_{uuid.uuid4().hex[:24]}",
                                text(function.get("name"), "name"),
                                orjson.dumps(arguments if arguments is not None else {}).decode()))
            self.calls += 1
        return tuple(out)


def message_of(message: Message, ids: list[str], call_id: str, tool_name: str) -> dict[str, Any]:
    """Return one message as Ollama takes it: images base64, calls' arguments as objects."""
    body: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        body["images"] = list(message.images)
    if message.thinking:
        body["thinking"] = message.thinking
    if message.tool_calls:
        body["tool_calls"] = [
            {"id": ident, "function": {"index": index, "name": call.name,
                                       "arguments": orjson.loads(call.arguments or "{}")}}
            for index, (ident, call) in enumerate(zip(ids, message.tool_calls, strict=True))]
    if message.role == "tool":
        if tool_name:
            body["tool_name"] = tool_name
        if call_id:
            body["tool_call_id"] = call_id
    return body


def tools_of(request: GenerationRequest) -> list[dict[str, Any]]:
    """Return the tools Ollama gets; refuse a choice it cannot be made to follow."""
    choice = request.tool_choice
    if choice is not None and choice.mode in ("required", "function"):
        raise refuse("ollama", ["tool_choice"], "An Ollama backend cannot be made to call "
                     "a tool (it takes only 'auto' or 'none').")
    if request.parallel_tool_calls is False:
        raise refuse("ollama", ["parallel_tool_calls"], "An Ollama backend cannot be kept "
                     "to one tool call.")
    if choice is not None and choice.mode == "none":
        return []  # Ollama calls no tool it was not given
    return [tool_body(tool) for tool in request.tools]


def build_payload(request: GenerationRequest) -> dict[str, Any]:
    """Translate a gateway request into an Ollama request body, always streamed (whole
    answers are assembled by the gateway, under the same timeouts)."""
    extra_fields, extra_options = extras_for("ollama", request)
    options = {OPTION_NAMES[name]: value for name, value in request.options.to_dict().items()}
    payload: dict[str, Any] = {**extra_fields, "model": request.model, "stream": True,
                               "options": {**extra_options, **options}}
    if request.op is Op.CHAT:
        payload["messages"] = [message_of(*entry) for entry in linked(request.messages)]
        tools = tools_of(request)
        if tools:
            payload["tools"] = tools
    else:
        payload["prompt"] = request.prompt
        if request.system:
            payload["system"] = request.system
        if request.images:
            payload["images"] = list(request.images)
    if request.response_format is not None:
        schema = request.response_format.schema
        payload["format"] = "json" if schema is None else schema
    if request.keep_alive is not None:  # it decides how long the model holds GPU memory
        payload["keep_alive"] = request.keep_alive
    if request.think is not None:
        payload["think"] = request.think
    if request.logprobs:
        payload["logprobs"] = True
        if request.top_logprobs:
            payload["top_logprobs"] = request.top_logprobs
    return payload


class ByteStream:
    """A forwarded answer's body as it arrives (pull progress); close it to stop it upstream."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        with translate_errors():
            yield from self._response.iter_content(chunk_size=None)
        self._finished = True

    def close(self) -> None:
        """Release the answer; abort it upstream if it was not read to its end."""
        if self._finished:
            self._response.close()
        else:  # the client left (or the read failed): the backend stops its work too
            abort_response(self._response)


def answer_of(response: requests.Response) -> Any:
    """Return a forwarded answer's JSON body; None when it has none (delete, copy)."""
    with translate_errors():
        body = response.content
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BackendError("The model backend's answer is not JSON.") from exc


def created_at(modified_at: str | None) -> int:
    """Return Ollama's RFC 3339 ``modified_at`` as Unix time (0 when unreadable)."""
    try:
        return int(datetime.fromisoformat(modified_at or "").timestamp())
    except ValueError:
        return 0


def model_info(entry: dict[str, Any]) -> dict[str, Any]:
    """Return one /api/tags entry as an OpenAI-style model object."""
    details = dict(entry.get("details") or {})
    for key in ("size", "digest", "modified_at"):
        if key in entry:
            details[key] = entry[key]
    return {"id": entry.get("name") or entry.get("model", ""), "object": "model",
            "created": created_at(entry.get("modified_at")), "owned_by": "ollama",
            "details": details}


class OllamaBackend(BackendClient):
    """Call one Ollama server over a pooled, per-process requests Session."""

    kind = "ollama"

    def __init__(self, base_url: str, *, timeouts: Timeouts, pool_size: int) -> None:
        super().__init__(base_url, timeouts=timeouts, pool_size=pool_size)

    def stream(self, request: GenerationRequest, deadline: float | None = None) -> TokenStream:
        """Start a streamed generation; the caller owns (closes) the returned stream."""
        decoder: Any = LineDecoder()
        if request.passthrough == self.kind:  # an Ollama client: the server's own lines
            decoder = OllamaFrames(decoder)
        return self.post_stream(ENDPOINTS[request.op], build_payload(request), decoder,
                                request.model, deadline)

    def embed(self, request: EmbeddingRequest, deadline: float | None = None) -> Embeddings:
        """Return the embedding of each input (Ollama's /api/embed)."""
        inputs = list(request.inputs)
        data = self.post_whole("/api/embed", {"model": request.model, "input": inputs},
                               deadline, self.timeouts.first_token)
        found = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(found, list) or len(found) != len(inputs):
            raise BackendError("The model backend answered /api/embed without the embeddings.")
        return Embeddings(optional_text(data.get("model"), "model") or request.model,
                          vectors(found, "embeddings"),
                          count(data.get("prompt_eval_count"), "prompt_eval_count"))

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Return the server's models (from /api/tags) as OpenAI-style model objects."""
        timeout = timeout or self.timeouts.first_token
        body = self.get_json("/api/tags", (self.timeouts.connect, timeout))
        return [model_info(m) for m in body.get("models") or []]

    def loaded_models(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Return the models in the server's memory (Ollama's /api/ps entries)."""
        return self.get_json("/api/ps", (self.timeouts.connect, timeout)).get("models") or []

    def version(self, timeout: float) -> str:
        """Return the server's version; a cheap readiness probe."""
        return str(self.get_json("/api/version", (timeout, timeout)).get("version", ""))

    def probe(self, timeout: float) -> Probe:
        """Return the server's models, those loaded in memory, and its version."""
        loaded = {m.get("name") or m.get("model", "") for m in self.loaded_models(timeout)}
        return Probe(self.list_models(timeout), loaded, self.version(timeout))

    def _forward(self, method: str, path: str, body: dict[str, Any] | None, *,
                 stream: bool, read_timeout: float) -> requests.Response:
        """Send a request to Ollama's native API as is; raise the error of a failed status."""
        payload = None if body is None else orjson.dumps(body)
        request = prepare(method, self.base_url + path, payload, self.headers)
        response = send(self.session, request, stream=stream,
                        timeout=(self.timeouts.connect, read_timeout))
        raise_for_status(response)
        return response

    def forward_json(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                     read_timeout: float | None = None) -> Any:
        """Forward a request (show, copy, delete, a whole pull) and return its JSON answer."""
        # A whole pull may take long.
        response = self._forward(method, path, body, stream=False,
                                 read_timeout=read_timeout or self.timeouts.total)
        return answer_of(response)

    def forward_stream(self, method: str, path: str,
                       body: dict[str, Any] | None = None) -> ByteStream:
        """Forward a request whose answer streams (pull progress); the caller closes it."""
        # Progress may pause between lines as long as tokens may.
        return ByteStream(self._forward(method, path, body, stream=True,
                                        read_timeout=self.timeouts.between_tokens))
