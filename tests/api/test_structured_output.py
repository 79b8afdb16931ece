"""Structured output, penalties and keep_alive reach the backend from every surface.

What the backend received is checked, not only the answer: a gateway that drops
``format`` still answers, with text that does not parse.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MESSAGES = [{"role": "user", "content": "Where?"}]
OPENAI_SCHEMA_FORMAT = {"type": "json_schema",
                        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}

# surface -> (path, body asking for a schema and a presence penalty)
SCHEMA_REQUESTS = {
    "native": ("/v1/chat", {"messages": MESSAGES, "response_format": OPENAI_SCHEMA_FORMAT,
                            "presence_penalty": 0.5, "model": "sim"}),
    "openai": ("/v1/chat/completions", {"messages": MESSAGES, "model": "sim",
                                        "response_format": OPENAI_SCHEMA_FORMAT,
                                        "presence_penalty": 0.5}),
    "ollama": ("/api/chat", {"messages": MESSAGES, "model": "sim", "stream": False,
                             "format": SCHEMA, "options": {"presence_penalty": 0.5}}),
}
# surface -> (path, body asking for any JSON object)
JSON_REQUESTS = {
    "native": ("/v1/generate", {"prompt": "Where?", "model": "sim",
                                "response_format": {"type": "json_object"}}),
    "openai": ("/v1/chat/completions", {"messages": MESSAGES, "model": "sim",
                                        "response_format": {"type": "json_object"}}),
    "ollama": ("/api/generate", {"prompt": "Where?", "model": "sim", "stream": False,
                                 "format": "json"}),
}


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> None:
    """Send ``body`` and require a successful answer."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("surface", SCHEMA_REQUESTS)
def test_a_schema_reaches_an_ollama_backend_as_format(client: FlaskClient,
                                                      fake_ollama: FakeOllama,
                                                      surface: str) -> None:
    post(client, *SCHEMA_REQUESTS[surface])
    seen = fake_ollama.requests_seen[0]
    assert seen["format"] == SCHEMA
    assert seen["options"]["presence_penalty"] == 0.5


@pytest.mark.parametrize("surface", SCHEMA_REQUESTS)
def test_a_schema_reaches_an_openai_backend_as_response_format(vllm_client: FlaskClient,
                                                               fake_vllm: FakeOpenAI,
                                                               surface: str) -> None:
    post(vllm_client, *SCHEMA_REQUESTS[surface])
    seen = fake_vllm.requests_seen[0]
    expected = OPENAI_SCHEMA_FORMAT if surface != "ollama" else {
        "type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}
    assert seen["response_format"] == expected
    assert seen["presence_penalty"] == 0.5


@pytest.mark.parametrize("surface", JSON_REQUESTS)
def test_json_mode_reaches_both_backend_kinds(client: FlaskClient, fake_ollama: FakeOllama,
                                              vllm_client: FlaskClient, fake_vllm: FakeOpenAI,
                                              surface: str) -> None:
    post(client, *JSON_REQUESTS[surface])
    post(vllm_client, *JSON_REQUESTS[surface])
    assert fake_ollama.requests_seen[0]["format"] == "json"
    assert fake_vllm.requests_seen[0]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("surface", ["native", "openai"])
def test_plain_text_sends_no_format(client: FlaskClient, fake_ollama: FakeOllama,
                                    surface: str) -> None:
    path, body = SCHEMA_REQUESTS[surface]
    post(client, path, {**body, "response_format": {"type": "text"}})
    assert "format" not in fake_ollama.requests_seen[0]


def test_keep_alive_reaches_ollama_and_not_openai(client: FlaskClient, fake_ollama: FakeOllama,
                                                  vllm_client: FlaskClient,
                                                  fake_vllm: FakeOpenAI) -> None:
    body = {"prompt": "hi", "model": "sim", "stream": False, "keep_alive": 0}
    post(client, "/api/generate", body)
    post(vllm_client, "/api/generate", body)
    assert fake_ollama.requests_seen[0]["keep_alive"] == 0
    assert "keep_alive" not in fake_vllm.requests_seen[0]


@pytest.mark.parametrize("option", ["num_ctx", "repeat_penalty"])
def test_an_ollama_only_option_for_an_openai_backend_names_it(vllm_client: FlaskClient,
                                                               fake_vllm: FakeOpenAI,
                                                               option: str) -> None:
    body = {"prompt": "hi", "model": "sim", "stream": False, "options": {option: 2}}
    response = vllm_client.post("/api/generate", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"invalid options.{option}: Only Ollama")
    assert fake_vllm.requests_seen == []


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ("/v1/chat", {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
     "response_format.json_schema.schema"),
    ("/v1/chat", {"messages": MESSAGES, "frequency_penalty": -3}, "frequency_penalty"),
], ids=["schema-missing", "schema-malformed", "penalty-out-of-range"])
def test_a_malformed_format_is_a_422_naming_it(client: FlaskClient, path: str,
                                               body: dict[str, Any], field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    found = error.get("param") or ".".join(_first_path(error["fields"]))
    assert found == field


def _first_path(fields: Any) -> list[str]:
    """Return the path of the first invalid field in nested validation messages."""
    if isinstance(fields, dict):
        key, value = next(iter(fields.items()))
        return [str(key), *_first_path(value)]
    return []
