"""Thinking, log probabilities and fields the gateway does not know, on every surface.

The fakes think when the prompt says ``[[sim:think]]`` (Ollama's
``message.thinking``, the OpenAI-compatible server's ``reasoning_content``) and
give log probabilities when the body asks for them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from tests.fake_ollama import THOUGHTS, FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.sse import parse_sse

THINK = "[[sim:think]] Why?"
THOUGHT = "".join(THOUGHTS)


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def chat(**body: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": THINK}], **body}


def sse_data(raw: bytes) -> list[Any]:
    return [data for _name, data in parse_sse(raw.removesuffix(b"data: [DONE]\n\n"))]


@pytest.mark.parametrize(("effort", "think"), [("high", "high"), ("minimal", "low"),
                                               ("none", False)])
def test_reasoning_effort_reaches_ollama_as_think(client: FlaskClient, fake_ollama: FakeOllama,
                                                  effort: str, think: Any) -> None:
    ok(client.post("/v1/chat/completions", json=chat(reasoning_effort=effort)))
    assert fake_ollama.requests_seen[0]["think"] == think


@pytest.mark.parametrize(("think", "sent"), [
    ("low", {"reasoning_effort": "low"}),
    (True, {"chat_template_kwargs": {"enable_thinking": True}}),
    (False, {"chat_template_kwargs": {"enable_thinking": False}}),
])
def test_think_reaches_an_openai_backend(vllm_client: FlaskClient, fake_vllm: FakeOpenAI,
                                         think: Any, sent: dict[str, Any]) -> None:
    ok(vllm_client.post("/api/chat", json=chat(think=think, stream=False)))
    seen = fake_vllm.requests_seen[0]
    assert {key: seen.get(key) for key in sent} == sent


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_openai_client_reads_reasoning_content(client: FlaskClient, vllm_client: FlaskClient,
                                               backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    whole = ok(gateway.post("/v1/chat/completions", json=chat())).get_json()
    assert whole["choices"][0]["message"]["reasoning_content"] == THOUGHT
    chunks = sse_data(ok(gateway.post("/v1/chat/completions", json=chat(stream=True))).data)
    pieces = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks]
    assert "".join(p for p in pieces if p) == THOUGHT


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_ollama_client_reads_thinking(client: FlaskClient, vllm_client: FlaskClient,
                                      backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    whole = ok(gateway.post("/api/chat", json=chat(stream=False))).get_json()
    assert whole["message"]["thinking"] == THOUGHT
    lines = [orjson.loads(line) for line in ok(gateway.post("/api/chat", json=chat())).data
             .splitlines()]
    assert "".join(line["message"].get("thinking", "") for line in lines) == THOUGHT
    assert lines[0]["message"]["thinking"] == THOUGHTS[0]  # thinking leads, as the model did


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_native_chat_carries_thinking(client: FlaskClient, vllm_client: FlaskClient,
                                      backend: str) -> None:
    gateway = client if backend == "ollama" else vllm_client
    whole = ok(gateway.post("/v1/chat", json=chat(think=True))).get_json()
    assert whole["thinking"] == THOUGHT
    events = sse_data(ok(gateway.post("/v1/chat/stream", json=chat(think=True))).data)
    assert "".join(e.get("thinking", "") for e in events) == THOUGHT


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_logprobs_on_both_surfaces(client: FlaskClient, vllm_client: FlaskClient,
                                   fake_ollama: FakeOllama, fake_vllm: FakeOpenAI,
                                   backend: str) -> None:
    gateway, fake = (client, fake_ollama) if backend == "ollama" else (vllm_client, fake_vllm)
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
            "logprobs": True, "top_logprobs": 2, "max_tokens": 3}
    openai = ok(gateway.post("/v1/chat/completions", json=body)).get_json()
    content = openai["choices"][0]["message"]["content"]
    tokens = openai["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == content and tokens[0]["logprob"] == -0.5
    seen = fake.requests_seen[0]
    assert (seen["logprobs"], seen["top_logprobs"]) == (True, 2)
    native = {key: value for key, value in body.items() if key != "max_tokens"}
    ollama = ok(gateway.post("/api/chat", json={**native, "stream": False,
                                                "options": {"num_predict": 3}})).get_json()
    assert "".join(t["token"] for t in ollama["logprobs"]) == ollama["message"]["content"]


def test_unknown_fields_reach_an_openai_backend(vllm_client: FlaskClient,
                                                fake_vllm: FakeOpenAI) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "min_tokens": 2,
            "chat_template_kwargs": {"enable_thinking": False}, "repetition_penalty": 1.1,
            "max_tokens": 5}
    ok(vllm_client.post("/v1/chat/completions", json=body))
    seen = fake_vllm.requests_seen[0]
    assert (seen["min_tokens"], seen["repetition_penalty"]) == (2, 1.1)
    assert seen["chat_template_kwargs"] == {"enable_thinking": False}
    assert seen["max_tokens"] == 5 and seen["model"] == "llama3.2"  # the gateway's policy


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "hi", "raw": True}, "raw"),
    ({"prompt": "hi", "options": {"mirostat": 2}}, "options.mirostat"),
], ids=["field", "option"])
def test_ollama_fields_cannot_reach_an_openai_backend(vllm_client: FlaskClient,
                                                      fake_vllm: FakeOpenAI,
                                                      body: dict[str, Any], field: str) -> None:
    response = vllm_client.post("/api/generate", json={**body, "stream": False})
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert message.startswith(f"invalid {field}: ") and "Ollama backend" in message
    assert fake_vllm.requests_seen == []
