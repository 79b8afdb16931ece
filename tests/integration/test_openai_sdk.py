"""The official ``openai`` package against the real gateway (gunicorn + gevent, keys on), in
front of the fake Ollama (translated) and a fake vLLM (passed through)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import TEST_KEY, GatewayProcess, start_gateway
from tests.fake_ollama import TOOL_ARGUMENTS, FakeOllama, vector
from tests.fake_openai import FakeOpenAI
from tests.integration.test_gunicorn import assert_no_traceback, idle_fake

LIMIT_S = 20  # the SDK's timeout for every call: no test waits longer on the gateway
TOKENS = [f" tok{i}" for i in range(8)]


@dataclass
class Setup:
    """A gateway, the fake behind it, and an SDK client with the right key."""

    gateway: GatewayProcess
    fake: FakeOllama
    client: openai.OpenAI

    def sdk(self, **options: Any) -> openai.OpenAI:
        """Return another client of this gateway (other key, ...)."""
        return self.client.with_options(**options)


def gateway_env(kind: str, fake: FakeOllama, keys_file: Path) -> dict[str, str]:
    """Return the environment of a keyed gateway in front of ``fake``."""
    env = {"GATEWAY_AUTH_DISABLED": "0", "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
           "GATEWAY_API_KEYS_FILE": str(keys_file), "GATEWAY_READ_TIMEOUT": "10",
           "GATEWAY_DEFAULT_MODEL": "llama3.2"}
    if kind == "openai":
        return {**env, "GATEWAY_OLLAMA_URL": "", "GATEWAY_OPENAI_URL": fake.url + "/v1"}
    return {**env, "GATEWAY_OLLAMA_URL": fake.url}


@pytest.fixture(scope="module", params=["ollama", "openai"])
def setup(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Run a keyed gateway in front of a fake Ollama or a fake vLLM, for the module."""
    fake_class = FakeOpenAI if request.param == "openai" else FakeOllama
    folder = tmp_path_factory.mktemp(f"sdk-{request.param}")
    with fake_class(tokens=8) as fake:
        server = start_gateway(gateway_env(request.param, fake, folder / "keys.json"),
                               folder / "gunicorn.log")
        client = openai.OpenAI(api_key=TEST_KEY, base_url=server.url + "/v1",
                               max_retries=0, timeout=LIMIT_S)
        try:
            yield Setup(server, fake, client)
        finally:
            client.close()
            server.stop()


@pytest.fixture
def env(setup: Setup) -> Iterator[Setup]:
    """Return the module's setup with an idle fake; fail on a traceback in the log."""
    idle_fake(setup.fake)
    log_start = len(setup.gateway.log())
    yield setup
    assert_no_traceback(setup.gateway, log_start)


def test_models_list(env: Setup) -> None:
    models = env.client.models.list()
    assert [m.id for m in models] == ["llama3.2:latest", "sim:latest"]
    assert all(m.object == "model" and isinstance(m.created, int) for m in models)


def test_chat(env: Setup) -> None:
    answer = env.client.chat.completions.create(
        model="sim", messages=[{"role": "system", "content": "Be brief"},
                               {"role": "user", "content": "Hi"}], max_tokens=3, seed=1)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "".join(TOKENS[:3])
    assert choice.finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_chat_stream_with_usage(env: Setup) -> None:
    stream = env.client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(TOKENS)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert env.fake.stats["completed"] == 1


def test_completion(env: Setup) -> None:
    answer = env.client.completions.create(model="sim", prompt="Once", max_tokens=2)
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "".join(TOKENS[:2])
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 2


def test_completion_stream(env: Setup) -> None:
    stream = env.client.completions.create(model="sim", prompt="Once", stream=True,
                                           stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "".join(TOKENS)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


@pytest.mark.parametrize("encoding", ["sdk-default", "float"], ids=["base64", "float"])
def test_embeddings(env: Setup, encoding: str) -> None:
    options = {} if encoding == "sdk-default" else {"encoding_format": encoding}
    answer = env.client.embeddings.create(model="sim", input=["one two", "three"], **options)
    got = [item.embedding for item in answer.data]
    for one, expected in zip(got, [vector("one two"), vector("three")], strict=True):
        assert one == pytest.approx(expected, rel=1e-6)
    assert answer.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_unknown_model_is_not_found(env: Setup, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        env.client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], stream=stream)
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.message
    assert caught.value.code == "model_not_found"


def test_bad_key_is_an_authentication_error(env: Setup) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        env.sdk(api_key="gw-not-a-key").models.list()
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as caught:
        env.sdk(api_key="gw-not-a-key").completions.create(model="sim", prompt="x")
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_busy_backend_is_503(env: Setup) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        env.client.completions.create(model="sim", prompt="[[sim:status=503]] hi")
    assert caught.value.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "1"


def test_unsupported_field_is_422_naming_it(env: Setup) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        env.client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "Hi"}], n=2)
    assert caught.value.param == "n" and "n=1" in caught.value.message


def test_failure_mid_stream_raises(env: Setup) -> None:
    stream = env.client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "[[sim:error-after=2]] Hi"}],
        stream=True)
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "".join(TOKENS[:2])
    assert "simulated" in caught.value.message


def test_closing_a_stream_cancels_upstream(env: Setup) -> None:
    stream = env.client.chat.completions.create(
        model="sim", stream=True,
        messages=[{"role": "user", "content": "[[sim:itl=0.05]] [[sim:tokens=400]] go"}])
    for count, _chunk in enumerate(stream):
        if count == 3:
            break
    assert env.fake.stats["active"] == 1, env.fake.stats
    stream.close()
    assert env.fake.wait_for("cancelled", 1, timeout=5), env.fake.stats
    assert env.fake.stats["completed"] == 0


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CALL_PROMPT = [{"role": "user", "content": "[[sim:tool=get_weather]] Weather in Paris?"}]


def test_tools_whole(env: Setup) -> None:
    answer = env.client.chat.completions.create(model="sim", messages=CALL_PROMPT,
                                                tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert env.fake.requests_seen[0]["tools"][0]["function"]["name"] == "get_weather"


def test_tools_streamed_through_the_sdks_own_accumulation(env: Setup) -> None:
    with env.client.chat.completions.stream(model="sim", messages=CALL_PROMPT,
                                            tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS


def test_a_tool_result_round_trip(env: Setup) -> None:
    first = env.client.chat.completions.create(model="sim", messages=CALL_PROMPT,
                                               tools=[WEATHER])
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    # The fake calls the tool again if the first turn still asks it to.
    answer = env.client.chat.completions.create(model="sim", tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"}, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C"}])
    assert answer.choices[0].finish_reason == "stop"
    tool = env.fake.requests_seen[1]["messages"][-1]
    assert tool["content"] == "18 C"
    # Linked as the backend links it: Ollama by the tool's name, OpenAI by the call's id.
    assert tool.get("tool_name", "get_weather") == "get_weather"
    assert tool["tool_call_id"] == call.id


def test_response_format_json_schema_reaches_the_backend(env: Setup) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    env.client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "Where?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    seen = env.fake.requests_seen[0]
    assert seen.get("format", seen.get("response_format", {}).get("json_schema", {})
                    .get("schema")) == schema


def test_an_image_part_reaches_the_backend(env: Setup) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 16).decode()
    env.client.chat.completions.create(model="sim", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    message = env.fake.requests_seen[0]["messages"][0]
    if "images" in message:  # an Ollama backend: base64
        assert message["images"] == [png]
    else:  # an OpenAI-compatible backend: the data: URL
        assert message["content"][1]["image_url"]["url"] == f"data:image/png;base64,{png}"
