"""The gateway mounted in a host Flask app under /ai, next to the host's own routes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import TEST_KEY
from tests.fake_ollama import FakeOllama
from tests.sse import parse_sse

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "host_app.py"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture
def host(fake_ollama: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("GATEWAY_OLLAMA_URL", fake_ollama.url)
    spec = importlib.util.spec_from_file_location("host_app_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_host_app({"TESTING": True, "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
                                   "GATEWAY_API_KEYS_FILE": str(tmp_path / "keys.json"),
                                   "GATEWAY_POLL_SECONDS": 0})


def test_host_routes_and_pages_are_untouched(host: Flask) -> None:
    client = host.test_client()
    assert client.get("/").get_data(as_text=True) == "<h1>Our product</h1>"
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.get_data(as_text=True) == "<h1>Not here (the host's own page)</h1>"


def test_streams_through_the_prefix(host: Flask) -> None:
    response = host.test_client().post("/ai/v1/generate/stream", headers=AUTH,
                                       json={"prompt": "hi", "model": "sim", "max_tokens": 3})
    events = parse_sse(response.get_data())
    response.close()
    assert [data["text"] for _, data in events[:-1]] == [" tok0", " tok1", " tok2"]
    assert events[-1][1]["done"] is True
    assert host.test_client().post("/v1/generate", json={"prompt": "x"}).status_code == 404


@pytest.mark.parametrize(("method", "path", "status", "type_"), [
    ("GET", "/ai/nope", 404, "not_found"),
    ("GET", "/ai/v1/generate", 405, "method_not_allowed"),
    ("POST", "/ai/v1/generate", 422, "validation_error"),
    ("POST", "/ai/v1/models", 405, "method_not_allowed"),
], ids=["unknown-path", "wrong-method", "invalid-body", "post-on-get-route"])
def test_errors_inside_the_prefix_are_the_gateways(host: Flask, method: str, path: str,
                                                   status: int, type_: str) -> None:
    response = host.test_client().open(path, method=method, headers=AUTH, json={})
    assert response.status_code == status
    assert response.get_json()["error"]["type"] == type_


def test_docs_live_under_the_prefix(host: Flask) -> None:
    client = host.test_client()
    spec = client.get("/ai/swagger.json").get_json()
    assert "/v1/generate" in spec["paths"] and spec["basePath"] == "/ai"
    page = client.get("/ai/docs").get_data(as_text=True)
    assert "/ai/swaggerui/swagger-ui-bundle.js" in page
    asset = client.get("/ai/swaggerui/swagger-ui-bundle.js")
    assert asset.status_code == 200
    asset.close()


def test_the_deployable_app_builds_no_session_per_request_but_a_host_keeps_its_own() -> None:
    from flask import session
    from flask.sessions import SecureCookieSessionInterface

    from app import NoSessions, create_app
    from flask_inference_gateway import InferenceGateway

    gateway_app = create_app({"GATEWAY_AUTH_DISABLED": "1"})
    seen = []
    for _ in range(2):
        with gateway_app.test_request_context("/healthz"):
            seen.append(session._get_current_object())  # type: ignore[attr-defined]
    assert isinstance(gateway_app.session_interface, NoSessions) and seen[0] is seen[1]
    host = Flask("host")
    InferenceGateway(host, config={"GATEWAY_AUTH_DISABLED": "1"})
    assert type(host.session_interface) is SecureCookieSessionInterface
