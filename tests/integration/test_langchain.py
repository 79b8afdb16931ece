"""LangChain's ChatOpenAI and ChatOllama through the real gateway (gunicorn + gevent, keys on).

Agent frameworks are the clients that break gateways most: they bind tools,
accumulate streamed tool call chunks and parse structured output on their
own. Each test runs against a gateway in front of the fake Ollama and in front
of the fake OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import langchain_ollama
import langchain_openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from pydantic import BaseModel

from tests.conftest import TEST_KEY, GatewayProcess, start_gateway
from tests.fake_ollama import TOOL_ARGUMENTS, FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.integration.test_gunicorn import idle_fake
from tests.integration.test_openai_sdk import gateway_env

CALL = "[[sim:tool=get_weather]] What is the weather in Paris?"


class Place(BaseModel):
    """Where something is."""

    city: str


def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"18 C in {city}"


@pytest.fixture(scope="module", params=["ollama", "openai"])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Any]]:
    """Run a keyed gateway in front of a fake Ollama or a fake vLLM, for the module."""
    fake_class = FakeOpenAI if request.param == "openai" else FakeOllama
    folder = tmp_path_factory.mktemp(f"langchain-{request.param}")
    with fake_class(tokens=4) as fake:
        server = start_gateway(gateway_env(request.param, fake, folder / "keys.json"),
                               folder / "gunicorn.log")
        try:
            yield server, fake
        finally:
            server.stop()


@pytest.fixture
def fake(gateway: tuple[GatewayProcess, Any]) -> Iterator[Any]:
    """Return the idle fake; close the HTTP clients the test's models opened."""
    yield idle_fake(gateway[1])
    while OPENED:
        OPENED.pop().close()


OPENED: list[httpx.Client] = []  # LangChain leaves its clients' connections open


def chat_openai(gateway: tuple[GatewayProcess, Any]) -> Any:
    OPENED.append(httpx.Client(timeout=20))
    return langchain_openai.ChatOpenAI(base_url=gateway[0].url + "/v1", api_key=TEST_KEY,
                                       model="sim", max_retries=0, http_client=OPENED[-1])


def chat_ollama(gateway: tuple[GatewayProcess, Any]) -> Any:
    llm = langchain_ollama.ChatOllama(
        base_url=gateway[0].url, model="sim",
        client_kwargs={"headers": {"Authorization": f"Bearer {TEST_KEY}"}, "timeout": 20})
    OPENED.append(llm._client._client)  # the ollama client's httpx client
    return llm


@pytest.mark.parametrize("make", [chat_openai, chat_ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_bind_tools_gets_the_call(gateway: tuple[GatewayProcess, Any], fake: Any,
                                  make: Any) -> None:
    answer = make(gateway).bind_tools([get_weather]).invoke(CALL)
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather" and call["args"] == TOOL_ARGUMENTS
    assert fake.requests_seen[0]["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("make", [chat_openai, chat_ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_streamed_tool_call_chunks_accumulate(gateway: tuple[GatewayProcess, Any], fake: Any,
                                              make: Any) -> None:
    total = None
    for chunk in make(gateway).bind_tools([get_weather]).stream(CALL):
        total = chunk if total is None else total + chunk
    assert total is not None
    (call,) = total.tool_calls
    assert call["name"] == "get_weather" and call["args"] == TOOL_ARGUMENTS


@pytest.mark.parametrize("make", [chat_openai, chat_ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_with_structured_output_as_a_json_schema(gateway: tuple[GatewayProcess, Any],
                                                 fake: Any, make: Any) -> None:
    place = make(gateway).with_structured_output(Place, method="json_schema").invoke("Where?")
    assert place == Place(city="Paris")
    seen = fake.requests_seen[0]
    schema = seen.get("format") or seen["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["city"]["type"] == "string"


def test_a_tool_result_round_trip(gateway: tuple[GatewayProcess, Any], fake: Any) -> None:
    llm = chat_openai(gateway).bind_tools([get_weather])
    first = llm.invoke(CALL)
    (call,) = first.tool_calls
    answer = llm.invoke([HumanMessage("What is the weather in Paris?"), first,
                         ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
    assert answer.content and not answer.tool_calls
    tool = fake.requests_seen[1]["messages"][-1]
    assert tool["content"] == "18 C in Paris" and tool["tool_call_id"] == call["id"]
