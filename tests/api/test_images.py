"""Images reach the backend from every surface: Ollama's base64 ``images``, OpenAI's data: URLs."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(24)).decode()
URL_PARTS = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
             {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}}]

# surface -> (path, a chat body whose message shows the PNG and the JPEG)
CHATS = {
    "native": ("/v1/chat", {"model": "sim", "messages": [
        {"role": "user", "content": "What is this?", "images": [PNG, JPEG]}]}),
    "openai": ("/v1/chat/completions", {"model": "sim", "messages": [
        {"role": "user", "content": URL_PARTS}]}),
    "ollama": ("/api/chat", {"model": "sim", "stream": False, "messages": [
        {"role": "user", "content": "What is this?", "images": [PNG, JPEG]}]}),
}


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> None:
    """Send ``body`` and require a successful answer."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("surface", CHATS)
def test_images_reach_an_ollama_backend_as_base64(client: FlaskClient, fake_ollama: FakeOllama,
                                                  surface: str) -> None:
    post(client, *CHATS[surface])
    message = fake_ollama.requests_seen[0]["messages"][0]
    assert message == {"role": "user", "content": "What is this?", "images": [PNG, JPEG]}


@pytest.mark.parametrize("surface", CHATS)
def test_images_reach_an_openai_backend_as_data_urls(vllm_client: FlaskClient,
                                                     fake_vllm: FakeOpenAI, surface: str) -> None:
    post(vllm_client, *CHATS[surface])
    assert fake_vllm.requests_seen[0]["messages"][0] == {"role": "user", "content": URL_PARTS}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/generate", {"prompt": "What is this?", "images": [PNG], "model": "sim"}),
    ("/api/generate", {"prompt": "What is this?", "images": [PNG], "model": "sim",
                       "stream": False}),
], ids=["native", "ollama"])
def test_prompt_images_reach_ollama(client: FlaskClient, fake_ollama: FakeOllama, path: str,
                                    body: dict[str, Any]) -> None:
    post(client, path, body)
    assert fake_ollama.requests_seen[0]["images"] == [PNG]


def test_prompt_images_for_an_openai_backend_name_the_field(vllm_client: FlaskClient,
                                                            fake_vllm: FakeOpenAI) -> None:
    response = vllm_client.post("/v1/generate", json={"prompt": "x", "images": [PNG]})
    assert response.status_code == 422
    assert "images" in response.get_json()["error"]["fields"]
    assert fake_vllm.requests_seen == []


@pytest.mark.parametrize(("url", "problem"), [
    ("https://example.com/cat.png", "does not fetch URLs"),
    ("data:image/png;base64,***", "base64"),
    ("data:text/plain;base64,aGk=", "data: URL of a base64-encoded image"),
], ids=["remote", "not-base64", "not-an-image"])
def test_an_image_url_the_gateway_cannot_use_is_a_422(client: FlaskClient, fake_ollama: FakeOllama,
                                                      url: str, problem: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    response = client.post("/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["param"] == "messages[0].content[0].image_url.url" and problem in error["message"]
    assert fake_ollama.requests_seen == []
