"""Who may call: keys in headers, public routes, model permissions, no secrets in logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flask_inference_gateway.security.keys import KeyEntry, hash_key, write_key_file
from tests.conftest import TEST_KEY

GENERATE = {"prompt": "hi", "model": "sim"}


@pytest.fixture
def anonymous(make_app):
    return make_app().test_client()


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TEST_KEY}"},
    {"Authorization": "Bearer "}, {"X-API-Key": "wrong"},
], ids=["missing", "invalid", "wrong-scheme", "empty-bearer", "invalid-x-api-key"])
@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream", "/v1/chat",
                                   "/v1/chat/stream"])
def test_requests_without_a_valid_key_get_401(anonymous, route: str, headers: dict) -> None:
    response = anonymous.post(route, json=GENERATE, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert response.get_json()["error"]["type"] == "unauthorized"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {TEST_KEY}"},
                                     {"authorization": f"bearer {TEST_KEY}"},
                                     {"X-API-Key": TEST_KEY}],
                         ids=["bearer", "lower-case", "x-api-key"])
def test_valid_key_in_either_header(anonymous, headers: dict) -> None:
    assert anonymous.post("/v1/generate", json=GENERATE, headers=headers).status_code == 200
    assert anonymous.get("/v1/models", headers=headers).status_code == 200


def test_models_route_needs_a_key(anonymous) -> None:
    assert anonymous.get("/v1/models").status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/swagger.json"])
def test_health_and_docs_are_open(anonymous, path: str) -> None:
    assert anonymous.get(path).status_code == 200


def test_no_key_configured_says_how_to_create_one(make_app) -> None:
    client = make_app(GATEWAY_API_KEYS="").test_client()
    response = client.post("/v1/generate", json=GENERATE)
    assert response.status_code == 401
    assert "keys create" in response.get_json()["error"]["message"]


def test_auth_disabled_needs_no_key(make_app) -> None:
    client = make_app(GATEWAY_API_KEYS="", GATEWAY_AUTH_DISABLED=True).test_client()
    assert client.post("/v1/generate", json=GENERATE).status_code == 200


def test_key_limited_to_models_gets_403(make_app, tmp_path: Path) -> None:
    path = tmp_path / "limited.json"
    write_key_file(str(path), [KeyEntry(name="narrow", hash=hash_key("narrow-key"),
                                        models=["llama3.2"])])
    client = make_app(GATEWAY_API_KEYS="", GATEWAY_API_KEYS_FILE=str(path)).test_client()
    headers = {"X-API-Key": "narrow-key"}
    allowed = client.post("/v1/generate", json={"prompt": "hi"}, headers=headers)
    refused = client.post("/v1/chat/stream", headers=headers, json={
        "model": "sim", "messages": [{"role": "user", "content": "hi"}]})
    assert allowed.status_code == 200
    assert refused.status_code == 403
    assert refused.get_json()["error"] == {
        "type": "forbidden", "message": "This API key may not use the model 'sim'.",
        "allowed_models": ["llama3.2"]}


def test_keys_never_reach_the_logs(make_app, caplog) -> None:
    client = make_app(GATEWAY_LOG_LEVEL="debug").test_client()
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/generate", json=GENERATE, headers={"X-API-Key": TEST_KEY})
        client.post("/v1/generate", json=GENERATE, headers={"X-API-Key": "gw-guess-1234"})
        client.post("/v1/generate", json={"prompt": "[[sim:status=500]]"},
                    headers={"X-API-Key": TEST_KEY})
    assert caplog.records
    assert TEST_KEY not in caplog.text and "gw-guess-1234" not in caplog.text
