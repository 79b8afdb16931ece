"""POST /v1/generate and /v1/chat against the fake Ollama."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from flask_inference_gateway.api.native.schemas import ChatResponse, GenerateResponse
from tests.conftest import free_port
from tests.fake_ollama import FakeOllama


def test_generate(client: FlaskClient, fake_ollama: FakeOllama) -> None:
    response = client.post("/v1/generate", json={"prompt": "Why is the sky blue?",
                                                 "max_tokens": 5, "temperature": 0.1,
                                                 "top_k": 3, "seed": 1, "system": "Be brief"})
    body = response.get_json()
    assert response.status_code == 200, body
    assert GenerateResponse().validate(body) == {}
    assert body["text"] == " tok0 tok1 tok2 tok3 tok4"
    assert body["model"] == "llama3.2" and body["id"].startswith("gen-")
    assert body["usage"]["completion_tokens"] == 5
    sent = fake_ollama.requests_seen[0]
    assert sent["options"] == {"num_predict": 5, "temperature": 0.1, "top_k": 3, "seed": 1}
    # A whole answer is streamed from the backend too (its timeouts then apply).
    assert sent["system"] == "Be brief" and sent["stream"] is True


def test_chat(client: FlaskClient, fake_ollama: FakeOllama) -> None:
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    response = client.post("/v1/chat", json={"model": "sim", "messages": messages})
    body = response.get_json()
    assert response.status_code == 200, body
    assert ChatResponse().validate(body) == {}
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"].startswith(" tok0")
    assert fake_ollama.requests_seen[0]["messages"] == messages


@pytest.mark.parametrize(("prompt", "model", "status", "type_"), [
    ("[[sim:status=503]]", "sim", 503, "backend_busy"),
    ("[[sim:status=400]]", "sim", 400, "backend_rejected"),
    ("[[sim:status=500]]", "sim", 502, "backend_failed"),
    ("hello", "no-such-model", 404, "model_not_found"),
], ids=["busy", "rejected", "server-error", "unknown-model"])
@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream"])
def test_backend_faults_before_the_first_byte(client: FlaskClient, route: str, prompt: str,
                                              model: str, status: int, type_: str) -> None:
    response = client.post(route, json={"prompt": prompt, "model": model})
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["type"] == type_
    if status == 503:
        assert response.headers["Retry-After"] == "1"


def test_backend_timeout(make_client) -> None:
    client = make_client(GATEWAY_TOTAL_TIMEOUT=0.3)
    response = client.post("/v1/generate", json={"prompt": "[[sim:delay=2]]"})
    assert response.status_code == 504
    assert response.get_json()["error"]["type"] == "backend_timeout"


def test_backend_unreachable(make_client) -> None:
    client = make_client(GATEWAY_OLLAMA_URL=f"http://127.0.0.1:{free_port()}")
    response = client.post("/v1/chat", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.get_json()["error"]["type"] == "backend_unavailable"
