"""The official ``ollama`` client against the real gateway (gunicorn + gevent, auth on)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests

from flask_inference_gateway.security.keys import KeyEntry, hash_key, write_key_file
from tests.conftest import TEST_KEY, GatewayProcess, start_gateway
from tests.fake_ollama import THOUGHTS, TOOL_ARGUMENTS, VERSION, FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.integration.test_gunicorn import idle_fake, run_gateway

ADMIN_KEY = "gw-admin-key-not-secret"
PIECES = [f" tok{i}" for i in range(8)]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
TIMEOUT = 15  # seconds: every client call is bounded


def auth_env(key_file: Path, backend: str, openai: bool = False) -> dict[str, str]:
    """Return a gateway environment with authentication on, in front of ``backend``."""
    urls = ({"GATEWAY_OLLAMA_URL": "", "GATEWAY_OPENAI_URL": backend + "/v1"} if openai
            else {"GATEWAY_OLLAMA_URL": backend})
    return {"GATEWAY_AUTH_DISABLED": "0", "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
            "GATEWAY_API_KEYS_FILE": str(key_file), "GATEWAY_DEFAULT_MODEL": "llama3.2",
            "GATEWAY_READ_TIMEOUT": "10", "GATEWAY_HEARTBEAT_SECONDS": "1", **urls}


def client(server: GatewayProcess, key: str = TEST_KEY) -> ollama.Client:
    """Return an official Ollama client of ``server`` that presents ``key``."""
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {key}"},
                         timeout=TIMEOUT)


@pytest.fixture(scope="module")
def gateway(module_fake: FakeOllama,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run one gunicorn gateway with a normal and an admin key, in front of the fake."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    write_key_file(str(key_file), [KeyEntry("ops", hash_key(ADMIN_KEY), admin=True)])
    yield from run_gateway(tmp_path_factory, **auth_env(key_file, module_fake.url))


@pytest.fixture
def fake(module_fake: FakeOllama) -> Iterator[FakeOllama]:
    """Return the module's fake, idle, with zeroed counters; restore its models after."""
    models = list(module_fake.models)
    yield idle_fake(module_fake)
    module_fake.models[:] = models


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_whole_answer(gateway: GatewayProcess, fake: FakeOllama, kind: str) -> None:
    with client(gateway) as ollama_client:
        if kind == "chat":
            answer: Any = ollama_client.chat("llama3.2", MESSAGES, stream=False)
            text = answer.message.content
        else:
            answer = ollama_client.generate("llama3.2", "hello", system="Be brief.",
                                            options={"num_predict": 5, "temperature": 0})
            text = answer.response
    assert text == "".join(PIECES[:8 if kind == "chat" else 5])
    assert answer.done and answer.done_reason == ("stop" if kind == "chat" else "length")
    assert answer.eval_count == (8 if kind == "chat" else 5) and answer.prompt_eval_count
    assert fake.requests_seen[-1]["stream"] is True  # whole answers are streamed upstream too


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_stream_arrives_piece_by_piece(gateway: GatewayProcess, fake: FakeOllama,
                                       kind: str) -> None:
    prompt = "[[sim:itl=0.2]] [[sim:tokens=5]] hello"
    started = time.monotonic()
    with client(gateway) as ollama_client:
        parts = (ollama_client.chat("llama3.2", [{"role": "user", "content": prompt}],
                                    stream=True) if kind == "chat"
                 else ollama_client.generate("llama3.2", prompt, stream=True))
        arrivals = [(time.monotonic() - started, part) for part in parts]
    texts = [part.message.content if kind == "chat" else part.response
             for _, part in arrivals[:-1]]
    assert texts == PIECES[:5]
    first_at, (done_at, last) = arrivals[0][0], arrivals[-1]
    assert last.done and last.done_reason == "stop" and last.eval_count == 5
    assert first_at < 0.6 and done_at - first_at > 0.6, (first_at, done_at)
    assert fake.stats["completed"] == 1


def test_lists_show_version_and_embed(gateway: GatewayProcess, fake: FakeOllama) -> None:
    fake.loaded = [{"name": "sim:latest", "model": "sim:latest", "size": 10, "size_vram": 10,
                    "digest": "d", "expires_at": "2030-01-01T00:00:00Z", "details": {}}]
    try:
        with client(gateway) as ollama_client:
            listed = ollama_client.list()
            running = ollama_client.ps()
            shown = ollama_client.show("llama3.2")
            embedded = ollama_client.embed("llama3.2", ["one", "two"])
    finally:
        fake.loaded = []
    assert [m.model for m in listed.models] == ["llama3.2:latest", "sim:latest"]
    assert listed.models[0].details.family == "llama"
    assert [m.model for m in running.models] == ["sim:latest"]
    assert shown.modelfile == "FROM llama3.2:latest" and shown.details.family == "llama"
    assert len(embedded.embeddings) == 2
    version = requests.get(gateway.url + "/api/version", timeout=TIMEOUT,
                           headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert version.json() == {"version": VERSION}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_unknown_model_is_a_404_response_error(gateway: GatewayProcess, fake: FakeOllama,
                                               stream: bool) -> None:
    with client(gateway) as ollama_client, pytest.raises(ollama.ResponseError) as caught:
        list(ollama_client.chat("nope", MESSAGES, stream=True)) if stream else (
            ollama_client.generate("nope", "hello"))
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "nope" not found, try pulling it first'


def test_bad_key_is_a_401(gateway: GatewayProcess, fake: FakeOllama) -> None:
    with client(gateway, "gw-not-a-key") as ollama_client, \
            pytest.raises(ollama.ResponseError) as caught:
        ollama_client.list()
    assert caught.value.status_code == 401 and "API key" in caught.value.error


def test_failure_mid_stream_raises_the_error(gateway: GatewayProcess, fake: FakeOllama) -> None:
    texts = []
    with client(gateway) as ollama_client, pytest.raises(ollama.ResponseError) as caught:
        for part in ollama_client.generate("llama3.2", "[[sim:error-after=3]] hi", stream=True):
            texts.append(part.response)
    assert texts == PIECES[:3]
    assert "simulated" in caught.value.error


def test_leaving_a_stream_cancels_the_generation(gateway: GatewayProcess,
                                                 fake: FakeOllama) -> None:
    with client(gateway) as ollama_client:
        parts = ollama_client.generate("llama3.2", "[[sim:tokens=400]] [[sim:itl=0.05]] go",
                                       stream=True)
        assert next(parts).response == PIECES[0]
        parts.close()  # the client stops reading and closes the connection
    assert fake.wait_for("cancelled", 1, timeout=5), fake.stats
    assert fake.stats["completed"] == 0


@pytest.mark.parametrize("call", [
    lambda c: c.pull("qwen2.5"), lambda c: c.delete("sim"), lambda c: c.copy("sim", "sim2"),
    lambda c: c.create("mine", from_="sim"), lambda c: c.push("sim"),
], ids=["pull", "delete", "copy", "create", "push"])
def test_model_management_is_refused_to_a_normal_key(gateway: GatewayProcess, fake: FakeOllama,
                                                     call: Any) -> None:
    with client(gateway) as ollama_client, pytest.raises(ollama.ResponseError) as caught:
        call(ollama_client)
    assert caught.value.status_code == 403 and "admin" in caught.value.error
    assert fake.requests_seen == []


def test_admin_key_manages_models(gateway: GatewayProcess, fake: FakeOllama) -> None:
    with client(gateway, ADMIN_KEY) as admin:
        progress = [part.status for part in admin.pull("qwen2.5", stream=True)]
        assert progress[0] == "pulling manifest" and progress[-1] == "success"
        assert admin.pull("phi3").status == "success"
        assert admin.copy("qwen2.5", "q2").status == "success"
        assert admin.delete("qwen2.5").status == "success"
    assert {"phi3:latest", "q2"} <= set(fake.models) and "qwen2.5:latest" not in fake.models
    assert [seen["path"] for seen in fake.requests_seen] == [
        "/api/pull", "/api/pull", "/api/copy", "/api/delete"]


def test_chat_through_an_openai_compatible_backend(tmp_path: Path) -> None:
    with FakeOpenAI(tokens=8) as vllm:
        server = start_gateway(auth_env(tmp_path / "keys.json", vllm.url, openai=True),
                               tmp_path / "gunicorn.log")
        try:
            with client(server) as ollama_client:
                whole = ollama_client.chat("llama3.2", MESSAGES)
                parts = list(ollama_client.chat("sim", MESSAGES, stream=True))
        finally:
            server.stop()
        assert whole.message.content == "".join(PIECES) and whole.eval_count == 8
        assert "".join(p.message.content for p in parts) == "".join(PIECES)
        assert parts[-1].done and parts[-1].done_reason == "stop"
        assert [seen["path"] for seen in vllm.requests_seen] == ["/v1/chat/completions"] * 2


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = [{"role": "user", "content": "[[sim:tool=get_weather]] [[sim:think]] Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16


def check_tool_turn(ollama_client: ollama.Client) -> None:
    """Ask for a tool call, whole and streamed, and check what the client read."""
    whole = ollama_client.chat("llama3.2", CALL, tools=[WEATHER], think=True)
    (call,) = whole.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == TOOL_ARGUMENTS
    assert whole.message.thinking == "".join(THOUGHTS)
    parts = list(ollama_client.chat("llama3.2", CALL, tools=[WEATHER], think=True,
                                    stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "".join(p.message.thinking or "" for p in parts) == "".join(THOUGHTS)
    assert parts[-1].done


def test_tools_and_thinking(gateway: GatewayProcess, fake: FakeOllama) -> None:
    with client(gateway) as ollama_client:
        check_tool_turn(ollama_client)
    seen = fake.requests_seen[0]
    assert seen["tools"][0]["function"]["name"] == "get_weather" and seen["think"] is True


def test_format_images_options_and_keep_alive_reach_the_backend(gateway: GatewayProcess,
                                                                 fake: FakeOllama) -> None:
    with client(gateway) as ollama_client:
        ollama_client.generate("llama3.2", "Where?", format=SCHEMA, images=[PNG],
                               options={"temperature": 0, "num_ctx": 2048, "min_p": 0.1},
                               keep_alive="10m")
        ollama_client.chat("llama3.2", MESSAGES, format="json")
    first, second = fake.requests_seen
    assert first["format"] == SCHEMA and first["keep_alive"] == "10m"
    assert first["images"] == [base64.b64encode(PNG).decode()]
    assert first["options"]["num_ctx"] == 2048 and first["options"]["min_p"] == 0.1
    assert second["format"] == "json"


def test_tools_and_thinking_through_an_openai_compatible_backend(tmp_path: Path) -> None:
    with FakeOpenAI(tokens=8) as vllm:
        server = start_gateway(auth_env(tmp_path / "keys.json", vllm.url, openai=True),
                               tmp_path / "gunicorn.log")
        try:
            with client(server) as ollama_client:
                check_tool_turn(ollama_client)
                ollama_client.chat("llama3.2", MESSAGES, format=SCHEMA, think="low")
        finally:
            server.stop()
    seen = vllm.requests_seen
    assert seen[0]["tools"][0]["function"]["name"] == "get_weather"
    assert seen[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert seen[-1]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert seen[-1]["reasoning_effort"] == "low"
