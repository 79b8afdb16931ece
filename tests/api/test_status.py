"""GET /v1/models, /healthz and /readyz."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from flask_inference_gateway.api.schemas import HealthBody, ModelList, ReadyBody
from tests.conftest import free_port


def test_models(client: FlaskClient) -> None:
    response = client.get("/v1/models")
    body = response.get_json()
    assert response.status_code == 200
    assert ModelList().validate(body) == {}
    assert [m["id"] for m in body["data"]] == ["llama3.2:latest", "sim:latest"]


@pytest.mark.parametrize("name", ["llama3.2", "llama3.2:latest"], ids=["bare", "tagged"])
def test_one_model(client: FlaskClient, name: str) -> None:
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 200
    assert response.get_json()["id"] == "llama3.2:latest"


def test_unknown_model_is_a_404(client: FlaskClient) -> None:
    response = client.get("/v1/models/no-such-model")
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "model_not_found"


def test_healthz_never_calls_the_backend(make_client) -> None:
    client = make_client(GATEWAY_OLLAMA_URL=f"http://127.0.0.1:{free_port()}")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert HealthBody().validate(response.get_json()) == {}


def test_ready(client: FlaskClient) -> None:
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200
    assert ReadyBody().validate(body) == {}
    assert body["backends"][0]["version"] == "0.12.0"


def test_not_ready_says_why(make_client) -> None:
    client = make_client(GATEWAY_OLLAMA_URL=f"http://127.0.0.1:{free_port()}")
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["status"] == "not_ready"
    assert body["backends"][0]["error"] == "The model backend cannot be reached."


def test_models_when_backend_down(make_client) -> None:
    client = make_client(GATEWAY_OLLAMA_URL=f"http://127.0.0.1:{free_port()}")
    response = client.get("/v1/models")
    assert response.status_code == 502
    assert response.get_json()["error"]["type"] == "backend_unavailable"
