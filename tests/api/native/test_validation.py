"""Every bad input gets a clear JSON error with the right status."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.fake_ollama import FakeOllama

ROUTES = ["/v1/generate", "/v1/generate/stream", "/v1/chat", "/v1/chat/stream"]
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}

BAD_BODIES = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "temperature": -0.1}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "stop": "\n"}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "model": ""}, "model"),
    ({"prompt": "x", "unknown": 1}, "unknown"),
]
BAD_CHAT_BODIES = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({**CHAT, "prompt": "x"}, "prompt"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES,
                         ids=["missing-prompt", "empty-prompt", "prompt-number", "max-tokens-0",
                              "max-tokens-over-limit", "max-tokens-string", "max-tokens-float",
                              "temperature-high", "temperature-negative", "temperature-string",
                              "temperature-bool", "top-p-high", "top-k-0", "stop-not-list",
                              "stop-empty-string", "model-empty", "unknown-field"])
@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream"])
def test_generate_schema_violations(client: FlaskClient, fake_ollama: FakeOllama, route: str,
                                    body: dict, field: str) -> None:
    response = client.post(route, json=body)
    error = response.get_json()["error"]
    assert response.status_code == 422
    assert error["type"] == "validation_error"
    assert field in error["fields"]
    assert fake_ollama.stats["requests"] == 0


@pytest.mark.parametrize(("body", "field"), BAD_CHAT_BODIES,
                         ids=["missing", "empty", "bad-role", "no-content", "not-a-list",
                              "unknown-field"])
@pytest.mark.parametrize("route", ["/v1/chat", "/v1/chat/stream"])
def test_chat_schema_violations(client: FlaskClient, route: str, body: dict,
                                field: str) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("kwargs", "status", "type_"), [
    ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": "[1, 2]", "content_type": "application/json"}, 422, "validation_error"),
    ({"data": "prompt=hi", "content_type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type"),
    ({"data": '{"prompt": "hi"}'}, 415, "unsupported_media_type"),
    ({"data": "{}" + " " * 2000, "content_type": "application/json"}, 413,
     "payload_too_large"),
], ids=["malformed", "not-an-object", "form", "no-content-type", "too-large"])
def test_body_errors(make_client, route: str, kwargs: dict, status: int, type_: str) -> None:
    client = make_client(GATEWAY_MAX_BODY_BYTES=1000)
    response = client.post(route, **kwargs)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["type"] == type_


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/generate", 405),
    ("DELETE", "/v1/chat/stream", 405),
    ("GET", "/v2/generate", 404),
    ("GET", "/", 404),
    ("GET", "/static/app.js", 404),
], ids=["get-generate", "delete-chat-stream", "unknown-route", "root", "no-static-files"])
def test_routing_errors_are_json(client: FlaskClient, method: str, path: str,
                                 status: int) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["type"] in ("not_found", "method_not_allowed")


def test_unexpected_failure_is_a_json_500(client: FlaskClient, monkeypatch) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("flask_inference_gateway.service.InferenceService.complete", explode)
    response = client.post("/v1/generate", json={"prompt": "hi"})
    assert response.status_code == 500
    assert response.get_json() == {"error": {
        "type": "internal_error",
        "message": "The gateway failed unexpectedly; the error was logged."}}


@pytest.mark.parametrize(("route", "body"), [
    ("/v1/generate", {"prompt": "hi", "images": None}),
    ("/v1/chat", {"messages": [{"role": "user", "content": "hi", "images": None}]}),
], ids=["generate", "chat-message"])
def test_null_images_mean_none(client: FlaskClient, fake_ollama: FakeOllama, route: str,
                               body: dict) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 200, response.get_json()
    seen = fake_ollama.requests_seen[0]
    assert "images" not in seen and all("images" not in m for m in seen.get("messages", ()))
