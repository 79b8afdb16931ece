"""The OpenAI-compatible routes against the fake Ollama (translated) and a fake vLLM (passed
through): bodies, streams, embeddings, and errors in OpenAI's shape."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_inference_gateway import InferenceGateway
from flask_inference_gateway.api.openai import errors as openai_errors
from flask_inference_gateway.api.openai.wire import finish_reason
from flask_inference_gateway.core import errors
from tests.conftest import TEST_KEY
from tests.fake_ollama import FakeOllama, vector
from tests.fake_openai import FakeOpenAI

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
OPENAI_KEYS = {"message", "type", "param", "code"}


def chat_body(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    """Return a chat completions body with one user message."""
    return {"messages": [{"role": "user", "content": content}], **extra}


def body_for(path: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    """Return a chat or completions body (by route) whose text is ``text``."""
    return chat_body(text, **extra) if path == CHAT else {"prompt": text, **extra}


def sse_data(raw: bytes) -> list[Any]:
    """Return each event's data: decoded JSON, or the string "[DONE]"; skip comments."""
    found: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            found.append(data if data == "[DONE]" else orjson.loads(data))
    return found


def openai_error(response: Any, status: int) -> dict[str, Any]:
    """Return the error object of a response, checking its status and OpenAI's shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and OPENAI_KEYS <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.fixture
def fake_vllm() -> Iterator[FakeOpenAI]:
    """Run a fake OpenAI-compatible server."""
    with FakeOpenAI(tokens=8) as fake:
        yield fake


@pytest.fixture(params=["ollama", "openai"])
def backend(request: pytest.FixtureRequest, make_client: Callable[..., FlaskClient],
            fake_ollama: FakeOllama) -> tuple[FlaskClient, FakeOllama]:
    """Return a client of a gateway in front of the fake Ollama or the fake vLLM, and the fake."""
    if request.param == "ollama":
        return make_client(), fake_ollama
    fake = request.getfixturevalue("fake_vllm")
    # The gateway's own chunks over both kinds; test_passthrough.py has the server's own.
    return make_client(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=fake.url + "/v1",
                       GATEWAY_STREAM_PASSTHROUGH="0"), fake


def sent_tokens(fake: FakeOllama) -> int:
    """Return the token limit the backend received in its last request."""
    seen = fake.requests_seen[-1]
    return seen["max_tokens"] if "max_tokens" in seen else seen["options"]["num_predict"]


def test_chat_whole(backend: tuple[FlaskClient, FakeOllama]) -> None:
    client, fake = backend
    messages = [{"role": "developer", "content": "Be brief"},
                {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                             {"type": "text", "text": "there"}]}]
    response = client.post(CHAT, json={"model": "sim", "messages": messages, "max_tokens": 5,
                                       "temperature": 0.2, "seed": 7, "stop": "never",
                                       "user": "ignored", "n": 1})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"].startswith("sim") and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "length",
                                "message": {"role": "assistant",
                                            "content": " tok0 tok1 tok2 tok3 tok4"}}]
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    seen = fake.requests_seen[-1]
    assert seen["messages"] == [{"role": "system", "content": "Be brief"},
                                {"role": "user", "content": "Hi\nthere"}]
    assert sent_tokens(fake) == 5
    assert seen.get("seed", seen.get("options", {}).get("seed")) == 7


@pytest.mark.parametrize("prompt", ["hello", ["hello"]], ids=["string", "list-of-one"])
def test_completion_whole(backend: tuple[FlaskClient, FakeOllama], prompt: Any) -> None:
    client, fake = backend
    response = client.post(COMPLETIONS, json={"prompt": prompt})
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == "".join(f" tok{i}" for i in range(8))
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert sent_tokens(fake) == 16  # OpenAI's default for completions


def test_chat_tokens_default_to_the_gateway_limit(make_client: Callable[..., FlaskClient],
                                                  fake_ollama: FakeOllama) -> None:
    client = make_client(GATEWAY_MAX_TOKENS=1000)
    assert client.post(CHAT, json=chat_body()).status_code == 200
    assert sent_tokens(fake_ollama) == 1000
    response = client.post(CHAT, json=chat_body(max_tokens=50, max_completion_tokens=3))
    assert response.get_json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_chat_stream(backend: tuple[FlaskClient, FakeOllama], include_usage: bool) -> None:
    client, _ = backend
    response = client.post(CHAT, json=chat_body(
        "[[sim:tokens=3]] hi", stream=True, stream_options={"include_usage": include_usage}))
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = sse_data(response.get_data())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == [" tok0", " tok1",
                                                                          " tok2"]
    assert chunks[4]["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                     "finish_reason": "stop"}]
    if include_usage:
        assert len(chunks) == 6 and chunks[5]["choices"] == []
        assert chunks[5]["usage"]["completion_tokens"] == 3
        assert all(c["usage"] is None for c in chunks[:5])
    else:
        assert len(chunks) == 5 and all("usage" not in c for c in chunks)


def test_completion_stream(backend: tuple[FlaskClient, FakeOllama]) -> None:
    client, _ = backend
    response = client.post(COMPLETIONS, json={"prompt": "hi", "max_tokens": 2, "stream": True,
                                              "stream_options": {"include_usage": True}})
    events = sse_data(response.get_data())
    assert events[-1] == "[DONE]"
    texts = [(c["object"], c["choices"][0]["text"], c["choices"][0]["finish_reason"])
             for c in events[:-2]]
    assert texts == [("text_completion", " tok0", None), ("text_completion", " tok1", None),
                     ("text_completion", "", "length")]
    assert events[-2]["usage"]["completion_tokens"] == 2


def test_failure_mid_stream_is_an_openai_error_event(
        backend: tuple[FlaskClient, FakeOllama]) -> None:
    client, _ = backend
    response = client.post(CHAT, json=chat_body("[[sim:error-after=2]] hi", stream=True))
    assert response.status_code == 200
    events = sse_data(response.get_data())
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert set(error) == OPENAI_KEYS and error["type"] == "server_error"
    assert error["code"] == "backend_error" and "simulated" in error["message"]
    assert [c["choices"][0]["delta"].get("content") for c in events[1:3]] == [" tok0", " tok1"]


@pytest.mark.parametrize("encoding", ["float", "base64", None], ids=["float", "base64", "default"])
def test_embeddings(backend: tuple[FlaskClient, FakeOllama], encoding: str | None) -> None:
    client, _ = backend
    body: dict[str, Any] = {"model": "sim", "input": ["one two", "three"]}
    if encoding:
        body["encoding_format"] = encoding
    response = client.post(EMBEDDINGS, json=body)
    answer = response.get_json()
    assert response.status_code == 200, answer
    assert answer["object"] == "list" and answer["model"].startswith("sim")
    assert [item["index"] for item in answer["data"]] == [0, 1]
    got = [item["embedding"] for item in answer["data"]]
    if encoding == "base64":
        got = [list(struct.unpack(f"<{len(vector('x'))}f", base64.b64decode(g))) for g in got]
    for one, expected in zip(got, [vector("one two"), vector("three")], strict=True):
        assert one == pytest.approx(expected, rel=1e-6)
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


def test_embeddings_take_a_string(client: FlaskClient) -> None:
    answer = client.post(EMBEDDINGS, json={"input": "hello"}).get_json()
    assert [item["embedding"] for item in answer["data"]] == [vector("hello")]


@pytest.mark.parametrize("extra", [
    {"tools": [], "tool_choice": "none", "parallel_tool_calls": True},
    {"logprobs": False, "top_logprobs": 0, "response_format": {"type": "text"}},
    {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "n": 1},
    {"stop": None, "seed": None, "temperature": None, "model": None, "stream": False},
    {"best_of": 1, "use_beam_search": False},
], ids=["tools", "logprobs-format", "penalties", "nulls", "one-generation"])
def test_neutral_values_of_unsupported_fields_are_accepted(client: FlaskClient,
                                                           extra: dict[str, Any]) -> None:
    response = client.post(CHAT, json=chat_body(**extra))
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(("path", "body", "param"), [
    (CHAT, chat_body(n=2), "n"),
    (CHAT, chat_body(tools=[{"type": "function", "function": {"name": "f"}}],
                     tool_choice="required"), "tool_choice"),
    (CHAT, chat_body(tools=[{"type": "function", "function": {"name": "f"}}],
                     parallel_tool_calls=False), "parallel_tool_calls"),
    (CHAT, chat_body(tool_choice={"type": "function", "function": {"name": "g"}},
                     tools=[{"type": "function", "function": {"name": "f"}}]), "tool_choice"),
    (CHAT, chat_body(tools=[{"type": "function", "function": {"name": "has space"}}]),
     "tools[0].function.name"),
    (CHAT, chat_body(response_format={"type": "xml"}), "response_format.type"),
    (CHAT, chat_body(top_logprobs=2), "top_logprobs"),
    (CHAT, chat_body(presence_penalty=2.5), "presence_penalty"),
    (CHAT, chat_body([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
     "messages[0].content[0].image_url.url"),
    (CHAT, chat_body(stream_options={"include_usage": True}), "stream_options"),
    (CHAT, chat_body(max_tokens=5000), "max_tokens"),
    (CHAT, chat_body(reasoning_effort="extreme"), "reasoning_effort"),
    (CHAT, chat_body(min_tokens=3), "min_tokens"),
    (CHAT, chat_body(best_of=3), "best_of"),
    (CHAT, chat_body(best_of=True), "best_of"),
    (CHAT, chat_body(logprobs="yes"), "logprobs"),
    (CHAT, chat_body(stream=0), "stream"),
    (CHAT, chat_body(use_beam_search=True), "use_beam_search"),
    (COMPLETIONS, {"prompt": "a", "use_beam_search": True}, "use_beam_search"),
    (CHAT, {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    (CHAT, {"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    (CHAT, {"messages": []}, "messages"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
    (COMPLETIONS, {"prompt": "a", "echo": True}, "echo"),
    (EMBEDDINGS, {"input": [[1, 2]]}, "input"),
    (EMBEDDINGS, {"input": "a", "dimensions": 64}, "dimensions"),
], ids=["n", "tool-required-on-ollama", "parallel-on-ollama", "unknown-tool-choice",
        "bad-tool-name", "bad-format", "top-logprobs-alone", "penalty-out-of-range",
        "remote-image", "stream-options", "too-many-tokens", "bad-effort",
        "unknown-field-on-ollama", "best-of", "best-of-true", "logprobs-text", "stream-number",
        "beam-search",
        "beam-search-completions", "bad-arguments", "null-user-content",
        "no-messages", "two-prompts",
        "token-prompt", "echo", "token-input", "dimensions"])
def test_unsupported_requests_are_422_naming_the_field(client: FlaskClient, path: str,
                                                       body: dict[str, Any],
                                                       param: str) -> None:
    error = openai_error(client.post(path, json=body), 422)
    assert error["type"] == "invalid_request_error" and error["code"] == "validation_error"
    assert error["param"] == param
    assert error["message"].startswith(f"Invalid '{param}': ")


@pytest.mark.parametrize(("path", "body", "status", "type_", "code"), [
    (CHAT, chat_body(model="no-such-model"), 404, "not_found_error", "model_not_found"),
    (COMPLETIONS, {"prompt": "[[sim:status=503]]"}, 503, "server_error", "backend_busy"),
    (CHAT, chat_body("[[sim:status=503]]", stream=True), 503, "server_error", "backend_busy"),
    (COMPLETIONS, {"prompt": "[[sim:status=400]]"}, 400, "invalid_request_error",
     "backend_rejected"),
    (EMBEDDINGS, {"model": "no-such-model", "input": "x"}, 404, "not_found_error",
     "model_not_found"),
], ids=["unknown-model", "busy", "busy-stream", "rejected", "unknown-embedding-model"])
def test_backend_errors(backend: tuple[FlaskClient, FakeOllama], path: str,
                        body: dict[str, Any], status: int, type_: str, code: str) -> None:
    client, _ = backend
    response = client.post(path, json=body)
    error = openai_error(response, status)
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)
    if status == 503:
        assert response.headers["Retry-After"] == "1"


def test_missing_key_is_401_in_openai_shape(app: Flask) -> None:
    response = app.test_client().post(CHAT, json=chat_body())
    error = openai_error(response, 401)
    assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


def test_rate_limit_is_429_in_openai_shape(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="1/minute")
    assert client.post(COMPLETIONS, json={"prompt": "x"}).status_code == 200
    response = client.post(COMPLETIONS, json={"prompt": "x"})
    error = openai_error(response, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.parametrize(("request_kwargs", "status", "code"), [
    ({"data": b"{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": b"prompt=x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"json": {"prompt": "x" * 2000}}, 413, "payload_too_large"),
], ids=["bad-json", "not-json", "too-large"])
def test_body_errors(make_client: Callable[..., FlaskClient], request_kwargs: dict[str, Any],
                     status: int, code: str) -> None:
    client = make_client(GATEWAY_MAX_BODY_BYTES=1000)
    error = openai_error(client.post(COMPLETIONS, **request_kwargs), status)
    assert (error["type"], error["code"]) == ("invalid_request_error", code)


def test_wrong_method_is_405_in_openai_shape(client: FlaskClient) -> None:
    response = client.get(CHAT)
    assert openai_error(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/generate", 422), ("GET", "/v1/generate", 405), ("GET", "/v1/nope", 404),
], ids=["invalid-body", "wrong-method", "unknown-path"])
def test_the_gateways_own_routes_keep_their_shape(client: FlaskClient, method: str, path: str,
                                                  status: int) -> None:
    response = client.open(path, method=method, json={})
    assert response.status_code == status
    assert "code" not in response.get_json()["error"]


def test_openai_shape_under_a_prefix(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    host = Flask("host")
    InferenceGateway(host, url_prefix="/ai", config={
        "GATEWAY_OLLAMA_URL": fake_ollama.url, "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
        "GATEWAY_API_KEYS_FILE": str(tmp_path / "keys.json"), "GATEWAY_POLL_SECONDS": 0,
        "GATEWAY_PROBE_SECONDS": 0, "GATEWAY_LOG_FORMAT": "text"})
    client = host.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_KEY}"
    assert client.post("/ai" + CHAT, json=chat_body(model="sim")).status_code == 200
    assert openai_error(client.get("/ai" + CHAT), 405)["code"] == "method_not_allowed"
    assert openai_error(client.post("/ai" + CHAT, json={}), 422)["param"] == "messages"
    assert "code" not in client.get("/ai/v1/generate").get_json()["error"]


@pytest.mark.parametrize(("status", "type_"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "invalid_request_error"), (422, "invalid_request_error"),
    (429, "rate_limit_error"), (502, "server_error"), (503, "server_error"),
    (504, "server_error"),
])
def test_openai_type_by_status(status: int, type_: str) -> None:
    error = next(cls() for cls in all_errors() if cls.status == status)
    body = openai_errors.body(error)["error"]
    assert (body["type"], body["code"], body["param"]) == (type_, error.type, None)


def all_errors() -> list[type[errors.GatewayError]]:
    """Return every GatewayError class with a fixed status."""
    found, todo = [], [errors.GatewayError]
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls is not errors.HTTPError]


@pytest.mark.parametrize(("done_reason", "expected"), [
    ("stop", "stop"), ("length", "length"), ("load", "stop"), (None, "stop"),
    ("content_filter", "content_filter"),
])
def test_finish_reason(done_reason: str | None, expected: str) -> None:
    assert finish_reason(done_reason) == expected


def test_swagger_documents_the_openai_routes(client: FlaskClient) -> None:
    spec = client.get("/swagger.json").get_json()
    post = spec["paths"][CHAT]["post"]
    assert post["produces"] == ["application/json", "text/event-stream"]
    assert post["responses"]["422"]["schema"] == {"$ref": "#/definitions/OpenAIErrorResponse"}
    body = next(p for p in post["parameters"] if p["in"] == "body")
    assert body["schema"] == {"$ref": "#/definitions/ChatCompletionRequest"}
