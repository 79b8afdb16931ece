"""The gateway under gunicorn + gevent in front of a real llama.cpp server (../shared).

``serve llama-server PORT tools`` serves a tiny model that makes real tool
calls when ``tool_choice`` is ``"required"``: llama-server constrains sampling
to its tool-call grammar and streams the arguments in fragments. So do JSON
schemas (``response_format``). These tests check the gateway's translations
against that server's own wire format, from every surface.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import orjson
import pytest
import requests

from tests.conftest import GatewayProcess, start_gateway
from tests.integration.realbackend import ABSENT, SERVE, llama_server
from tests.sse import parse_sse

pytestmark = pytest.mark.skipif(not SERVE.exists(), reason=ABSENT)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOKENS = 128  # a call takes 35 to 75 tokens of this model


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run the real llama-server with the tool-calling tiny model."""
    with llama_server(tmp_path_factory.mktemp("llama"), "tools") as url:
        yield url


@pytest.fixture(scope="module")
def text_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run llama-server with the plain tiny model (text)."""
    with llama_server(tmp_path_factory.mktemp("llama-text")) as url:
        yield url


@pytest.fixture(scope="module")
def text_gateway(text_llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run the gateway in front of llama-server with the plain tiny model."""
    folder = tmp_path_factory.mktemp("gateway-text")
    server = start_gateway({"GATEWAY_OLLAMA_URL": "", "GATEWAY_OPENAI_URL": text_llama + "/v1",
                            "GATEWAY_DEFAULT_MODEL": "tiny"}, folder / "gunicorn.log")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def gateway(llama: str, gateway_server: Callable[..., GatewayProcess]) -> str:
    """Run the gateway with llama-server as its only (OpenAI-compatible) backend."""
    return gateway_server(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=llama + "/v1",
                          GATEWAY_DEFAULT_MODEL="tiny").url


@pytest.fixture
def sdk(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="unused", base_url=gateway + "/v1", max_retries=0,
                       timeout=60) as client:
        yield client


def post(url: str, body: dict, status: int = 200) -> requests.Response:
    response = requests.post(url, json=body, timeout=60)
    assert response.status_code == status, response.text
    return response


def test_a_real_tool_call_whole(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER],
                                         tool_choice="required", max_tokens=TOKENS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments), dict)
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_a_real_tool_call_streamed_through_the_sdks_accumulation(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(model="tiny", messages=ASK, tools=[WEATHER],
                                     tool_choice="required", max_tokens=TOKENS) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)  # the fragments concatenate


def test_a_tool_result_turn_is_accepted(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER],
                                        tool_choice="required", max_tokens=TOKENS)
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    answer = sdk.chat.completions.create(model="tiny", tools=[WEATHER], max_tokens=16,
                                         messages=[*ASK, message.model_dump(exclude_none=True),
                                                   {"role": "tool", "tool_call_id": call.id,
                                                    "content": "18 C and sunny"}])
    assert answer.choices[0].message.content is not None


def test_native_chat_gets_the_call_with_arguments_as_an_object(gateway: str) -> None:
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required",
            "max_tokens": TOKENS}
    whole = post(gateway + "/v1/chat", body).json()
    assert whole["done_reason"] == "tool_calls"
    (call,) = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], dict)
    events = [data for _n, data in parse_sse(post(gateway + "/v1/chat/stream", body).content)]
    assert events[-1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_ollama_client_with_tools_reaches_llama_server(gateway: str) -> None:
    # Ollama's API has no tool_choice: with "auto" this model answers short text.
    lines = [orjson.loads(line) for line in post(gateway + "/api/chat", {
        "model": "tiny", "messages": ASK, "tools": [WEATHER],
        "options": {"num_predict": 16}}).content.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] > 0


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "tiny", "messages": ASK, "max_tokens": TOKENS,
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "place", "schema": SCHEMA}}}),
    ("/api/chat", {"model": "tiny", "messages": ASK, "stream": False, "format": SCHEMA,
                   "options": {"num_predict": TOKENS}}),
], ids=["openai", "ollama-format"])
def test_structured_output_parses_against_the_schema(gateway: str, path: str,
                                                     body: dict) -> None:
    answer = post(gateway + path, body).json()
    text = (answer["choices"][0]["message"]["content"] if "choices" in answer
            else answer["message"]["content"])
    assert isinstance(json.loads(text)["city"], str)


def test_counts_equal_the_servers_own(gateway: str, llama: str) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 8, "seed": 5, "temperature": 0}
    ours = post(gateway + "/v1/chat/completions", body).json()
    theirs = post(llama + "/v1/chat/completions", body).json()
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"]


def test_a_context_overflow_is_the_gateways_400(gateway: str) -> None:
    long = " ".join(f"word{i}" for i in range(3000))
    error = post(gateway + "/v1/chat/completions",
                 {"model": "tiny", "messages": [{"role": "user", "content": long}]}, 400).json()
    assert error["error"]["type"] == "invalid_request_error"
    assert "context" in error["error"]["message"]


def test_the_servers_cache_report_reaches_the_client(gateway: str) -> None:
    # llama-server reuses the KV cache of a prefix it has just seen, and says so.
    body = {"model": "tiny", "messages": ASK * 20, "max_tokens": 2, "seed": 1}
    post(gateway + "/v1/chat/completions", body)
    again = post(gateway + "/v1/chat/completions", body).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    streamed = post(gateway + "/v1/chat/completions", {
        **body, "stream": True, "stream_options": {"include_usage": True}})
    usage = [data for _n, data in parse_sse(streamed.content.removesuffix(b"data: [DONE]\n\n"))
             if data.get("usage")][-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/generate", {"prompt": "def add(a, b):", "max_tokens": 6}),
    ("/v1/generate/stream", {"prompt": "def add(a, b):", "max_tokens": 6}),
    ("/v1/chat/stream", {"messages": ASK, "max_tokens": 6}),
    ("/v1/completions", {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 6,
                         "stream": True, "stream_options": {"include_usage": True}}),
    ("/api/generate", {"model": "tiny", "prompt": "def add(a, b):",
                       "options": {"num_predict": 6}}),
    ("/api/chat", {"model": "tiny", "messages": ASK, "stream": False,
                   "options": {"num_predict": 6}}),
], ids=["native-generate", "native-generate-stream", "native-chat-stream",
        "openai-completions-stream", "ollama-generate-stream", "ollama-chat"])
def test_text_on_every_surface(text_gateway: str, path: str, body: dict) -> None:
    raw = post(text_gateway + path, body).content
    if path.startswith("/api/"):
        last = [orjson.loads(line) for line in raw.splitlines()][-1]
        assert last["done"] is True and last["eval_count"] == 6
        assert last["done_reason"] == "length"
    elif path.endswith("stream") or body.get("stream"):
        events = [d for _n, d in parse_sse(raw.removesuffix(b"data: [DONE]\n\n"))]
        usage = events[-1]["usage"]
        assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0
    else:
        answer = orjson.loads(raw)
        assert answer["usage"]["completion_tokens"] == 6 and answer["done_reason"] == "length"


def test_embeddings_from_llama_server(gateway_server: Callable[..., GatewayProcess],
                                      tmp_path: Path) -> None:
    with llama_server(tmp_path, "embed") as url:
        gateway = gateway_server(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=url + "/v1",
                                 GATEWAY_DEFAULT_MODEL="tiny-embed").url
        openai_answer = post(gateway + "/v1/embeddings", {"input": ["a b", "c"]}).json()
        ollama_answer = post(gateway + "/api/embed", {"input": ["a b", "c"]}).json()
    vectors = [item["embedding"] for item in openai_answer["data"]]
    assert len(vectors) == 2 and len(vectors[0]) > 0
    for ours, theirs in zip(ollama_answer["embeddings"], vectors, strict=True):
        assert ours == pytest.approx(theirs)


def test_an_openai_client_reads_the_servers_own_chunks(text_gateway: str,
                                                       text_llama: str) -> None:
    # Passed on as sent: llama-server's ids, its timings and every other field, as a
    # direct request gets them.
    body = {"model": "tiny", "messages": ASK, "max_tokens": 6, "seed": 7, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}

    def events(url: str) -> list[dict]:
        raw = post(url + "/v1/chat/completions", body).content
        assert raw.endswith(b"data: [DONE]\n\n")
        return [d for _n, d in parse_sse(raw.removesuffix(b"data: [DONE]\n\n"))]
    ours, theirs = events(text_gateway), events(text_llama)
    assert [sorted(event) for event in ours] == [sorted(event) for event in theirs]
    assert [e["choices"] for e in ours] == [e["choices"] for e in theirs]
    assert "timings" in ours[-1] and ours[-1]["usage"]["completion_tokens"] == 6
