"""An OpenAI client in front of an OpenAI-compatible server reads the server's own chunks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from tests.api.openai.test_routes import CHAT, COMPLETIONS, chat_body, sse_data
from tests.fake_openai import FakeOpenAI


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS], ids=["chat", "completions"])
def test_with_usage_the_client_reads_exactly_what_the_server_sent(
        vllm_client: FlaskClient, fake_vllm: FakeOpenAI, path: str) -> None:
    body = chat_body("[[sim:tokens=3]] hi") if path == CHAT else {"prompt": "[[sim:tokens=3]] hi"}
    response = vllm_client.post(path, json={**body, "stream": True,
                                            "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.get_data() == fake_vllm.streams_sent[-1]
    assert sse_data(response.get_data())[-2]["usage"]["completion_tokens"] == 3


def test_without_usage_the_usage_chunk_is_left_out(vllm_client: FlaskClient,
                                                   fake_vllm: FakeOpenAI) -> None:
    response = vllm_client.post(CHAT, json=chat_body("[[sim:tokens=3]] hi", stream=True))
    got = response.get_data()  # read to the end first: the stream is relayed as it is read
    sent = fake_vllm.streams_sent[-1].split(b"\n\n")
    usage = [event for event in sent if b'"usage":{' in event]
    assert len(usage) == 1 and b'"choices":[]' in usage[0]  # the gateway asked for it
    assert got == b"\n\n".join(e for e in sent if e not in usage)


def test_the_server_is_asked_for_usage_and_the_gateways_limits(
        vllm_client: FlaskClient, fake_vllm: FakeOpenAI) -> None:
    vllm_client.post(CHAT, json=chat_body(stream=True))
    seen = fake_vllm.requests_seen[-1]
    assert seen["stream_options"] == {"include_usage": True} and seen["max_tokens"] == 4096


def test_a_failure_mid_stream_is_an_openai_error_then_done(vllm_client: FlaskClient) -> None:
    response = vllm_client.post(CHAT, json=chat_body("[[sim:error-after=2]] hi", stream=True))
    events = sse_data(response.get_data())
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"
    assert [e["choices"][0]["delta"]["content"] for e in events[:2]] == [" tok0", " tok1"]


def test_tool_call_fragments_pass_as_the_server_sent_them(vllm_client: FlaskClient,
                                                          fake_vllm: FakeOpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "parameters": {"type": "object"}}}]
    response = vllm_client.post(CHAT, json=chat_body(
        "[[sim:tool=get_weather]] hi", stream=True, tools=tools,
        stream_options={"include_usage": True}))
    assert response.get_data() == fake_vllm.streams_sent[-1]
    assert any(e["choices"] and e["choices"][0]["delta"].get("tool_calls")
               for e in sse_data(response.get_data())[:-1])


def test_off_the_gateway_writes_its_own_chunks(make_client: Callable[..., FlaskClient],
                                               fake_vllm: FakeOpenAI) -> None:
    client = make_client(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=fake_vllm.url + "/v1",
                         GATEWAY_STREAM_PASSTHROUGH="0")
    response = client.post(CHAT, json=chat_body("[[sim:tokens=2]] hi", stream=True))
    events = sse_data(response.get_data())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["id"].startswith("chatcmpl-") and response.get_data() != \
        fake_vllm.streams_sent[-1]
