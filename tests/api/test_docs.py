"""Swagger UI and a valid Swagger 2.0 spec built from the marshmallow schemas."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from flask_inference_gateway.api.swagger import definitions

ROUTES = {
    "/v1/generate": "post", "/v1/generate/stream": "post", "/v1/chat": "post",
    "/v1/chat/stream": "post", "/v1/models": "get", "/healthz": "get", "/readyz": "get",
    "/metrics": "get", "/v1/chat/completions": "post", "/v1/completions": "post",
    "/v1/embeddings": "post", "/v1/models/{model_id}": "get",
    **{f"/api/{name}": "post" for name in ("generate", "chat", "embed", "show", "pull", "push",
                                            "create", "copy")},
    **{f"/api/{name}": "get" for name in ("tags", "ps", "version")}, "/api/delete": "delete",
}


@pytest.fixture
def spec(client: FlaskClient) -> dict:
    response = client.get("/swagger.json")
    assert response.status_code == 200
    return response.get_json()


def test_spec_is_valid_swagger_2(spec: dict) -> None:
    assert spec["swagger"] == "2.0"
    validate(spec)


def test_spec_names_every_route(spec: dict, app) -> None:
    assert {path: set(ops) - {"parameters"} for path, ops in spec["paths"].items()} == {
        path: {method} for path, method in ROUTES.items()}
    # Flask writes a path parameter as <path:name>, Swagger as {name}.
    served = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()}
    assert set(ROUTES) <= served


@pytest.mark.parametrize("path", ["/v1/generate/stream", "/v1/chat/stream"])
def test_streaming_routes_produce_event_streams(spec: dict, path: str) -> None:
    assert spec["paths"][path]["post"]["produces"] == ["text/event-stream"]


@pytest.mark.parametrize(("path", "method", "name"), [
    ("/v1/generate", "post", "GenerateRequest"), ("/v1/chat/stream", "post", "ChatRequest"),
], ids=["generate", "chat-stream"])
def test_request_bodies_come_from_the_schemas(spec: dict, path: str, method: str,
                                              name: str) -> None:
    body = next(p for p in spec["paths"][path][method]["parameters"] if p["in"] == "body")
    assert body["schema"] == {"$ref": f"#/definitions/{name}"}
    assert spec["definitions"][name] == definitions()[name]
    assert spec["definitions"][name]["additionalProperties"] is False


def test_errors_are_documented(spec: dict) -> None:
    responses = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "422", "502", "503", "504"} <= set(responses)
    assert responses["422"]["schema"] == {"$ref": "#/definitions/ErrorResponse"}


def test_swagger_ui(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert b"swagger-ui" in response.get_data()
