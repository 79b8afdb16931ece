"""Tools, tool calls and tool results on every surface, to both backend kinds.

The fakes call a tool when the prompt says ``[[sim:tool=NAME]]``: the Ollama
fake sends the call whole, its arguments an object; the OpenAI-compatible fake
streams it in fragments of JSON text, as vLLM and llama.cpp do. What each
backend received is checked, not only the answer.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from tests.fake_ollama import TOOL_ARGUMENTS, TOOL_CALL_ID, FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.sse import parse_sse

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
ASK = "[[sim:tool=get_weather]] Weather in Paris?"
# A finished round trip, as an OpenAI client sends it back.
OPENAI_ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
]
# The same round trip as an Ollama client sends it: no ids, arguments as an object.
OLLAMA_ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_name": "get_weather", "content": "18 C"},
]


def ok(response: Any) -> Any:
    """Require a successful answer and return it."""
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def openai_chat(**body: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": ASK}],
            "tools": [TOOL], **body}


def ollama_chat(**body: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": ASK}],
            "tools": [TOOL], **body}


def streamed_calls(raw: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """Accumulate delta.tool_calls as the OpenAI SDK does; return them and the finish."""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    assert raw.endswith(b"data: [DONE]\n\n")
    for _name, data in parse_sse(raw.removesuffix(b"data: [DONE]\n\n")):
        if not isinstance(data, dict) or not data.get("choices"):
            continue
        choice = data["choices"][0]
        finish = choice.get("finish_reason") or finish
        for part in choice["delta"].get("tool_calls") or []:
            if part["index"] not in calls:  # the first fragment names the call
                assert part["id"] and part["type"] == "function"
                assert part["function"]["name"]
                calls[part["index"]] = {"id": part["id"], "name": part["function"]["name"],
                                        "arguments": ""}
            calls[part["index"]]["arguments"] += part["function"].get("arguments") or ""
    return [calls[i] for i in sorted(calls)], finish


def sent_tools(seen: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in seen.get("tools") or []]


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_openai_client_gets_a_whole_tool_call(client: FlaskClient, vllm_client: FlaskClient,
                                              fake_ollama: FakeOllama, fake_vllm: FakeOpenAI,
                                              backend: str) -> None:
    gateway, fake = (client, fake_ollama) if backend == "ollama" else (vllm_client, fake_vllm)
    body = ok(gateway.post("/v1/chat/completions", json=openai_chat())).get_json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == TOOL_ARGUMENTS
    assert call["id"] == TOOL_CALL_ID
    seen = fake.requests_seen[0]
    assert sent_tools(seen) == ["get_weather"]
    assert seen["tools"][0]["function"]["parameters"] == TOOL["function"]["parameters"]


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_openai_client_gets_streamed_tool_call_fragments(
        client: FlaskClient, vllm_client: FlaskClient, backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    raw = ok(gateway.post("/v1/chat/completions", json=openai_chat(stream=True))).data
    calls, finish = streamed_calls(raw)
    assert finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == TOOL_ARGUMENTS  # fragments concatenate


def test_a_tool_result_reaches_an_ollama_backend_with_its_tool_name(
        client: FlaskClient, fake_ollama: FakeOllama) -> None:
    ok(client.post("/v1/chat/completions", json={"model": "llama3.2", "tools": [TOOL],
                                                 "messages": OPENAI_ROUND_TRIP}))
    assistant, tool = fake_ollama.requests_seen[0]["messages"][1:]
    (call,) = assistant["tool_calls"]
    assert call["function"]["arguments"] == {"city": "Paris"}  # an object, as Ollama takes it
    assert call["function"]["name"] == "get_weather" and call["id"] == "call_1"
    assert (tool["tool_name"], tool["tool_call_id"], tool["content"]) == (
        "get_weather", "call_1", "18 C")


def test_a_tool_result_reaches_an_openai_backend_with_its_call_id(
        vllm_client: FlaskClient, fake_vllm: FakeOpenAI) -> None:
    ok(vllm_client.post("/api/chat", json={"model": "llama3.2", "stream": False,
                                           "tools": [TOOL], "messages": OLLAMA_ROUND_TRIP}))
    assistant, tool = fake_vllm.requests_seen[0]["messages"][1:]
    (call,) = assistant["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}  # JSON text
    assert call["type"] == "function" and call["id"]  # an id made up for the link
    assert assistant["content"] is None
    assert tool == {"role": "tool", "content": "18 C", "tool_call_id": call["id"]}


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_ollama_client_gets_a_whole_tool_call(client: FlaskClient, vllm_client: FlaskClient,
                                              backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    body = ok(gateway.post("/api/chat", json=ollama_chat(stream=False))).get_json()
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == TOOL_ARGUMENTS  # an object, as Ollama writes it
    assert body["done_reason"] == "stop"  # Ollama's word for a turn of tool calls


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_ollama_client_gets_streamed_tool_calls_in_a_line(client: FlaskClient,
                                                          vllm_client: FlaskClient,
                                                          backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    raw = ok(gateway.post("/api/chat", json=ollama_chat())).data
    lines = [orjson.loads(line) for line in raw.splitlines()]
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["done"] is False
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": TOOL_ARGUMENTS}
    assert lines[-1]["done"] is True


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_native_chat_answers_tool_calls(client: FlaskClient, vllm_client: FlaskClient,
                                        backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": ASK}],
            "tools": [TOOL]}
    whole = ok(gateway.post("/v1/chat", json=body)).get_json()
    assert whole["done_reason"] == "tool_calls"
    (call,) = whole["message"]["tool_calls"]
    assert call["function"]["arguments"] == TOOL_ARGUMENTS
    events = [data for _name, data in parse_sse(ok(gateway.post("/v1/chat/stream",
                                                                json=body)).data)]
    done = events[-1]
    assert done["done"] is True and done["done_reason"] == "tool_calls"
    assert done["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_choice_and_parallel_calls_reach_an_openai_backend(
        vllm_client: FlaskClient, fake_vllm: FakeOpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    ok(vllm_client.post("/v1/chat/completions", json=openai_chat(
        tool_choice=named, parallel_tool_calls=False)))
    ok(vllm_client.post("/v1/chat", json={"messages": [{"role": "user", "content": "hi"}],
                                          "tools": [TOOL], "tool_choice": "required"}))
    first, second = fake_vllm.requests_seen
    assert first["tool_choice"] == named and first["parallel_tool_calls"] is False
    assert second["tool_choice"] == "required"


def test_tool_choice_none_sends_no_tools_to_ollama(client: FlaskClient,
                                                   fake_ollama: FakeOllama) -> None:
    ok(client.post("/v1/chat/completions", json=openai_chat(tool_choice="none")))
    assert "tools" not in fake_ollama.requests_seen[0]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", openai_chat(tool_choice="required"), "tool_choice"),
    ("/v1/chat", {"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL],
                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "tool_choice"),
    ("/v1/chat/completions", openai_chat(parallel_tool_calls=False), "parallel_tool_calls"),
], ids=["required", "named", "one-call"])
def test_what_ollama_cannot_do_with_tools_is_a_422_naming_the_field(
        client: FlaskClient, fake_ollama: FakeOllama, path: str, body: dict[str, Any],
        field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert field in text and "OpenAI-compatible backend" in text  # who would serve it
    assert fake_ollama.requests_seen == []
