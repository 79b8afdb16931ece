"""The OpenAI-compatible adapter, against mocked HTTP (responses) and the fake vLLM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import responses

from flask_inference_gateway.core.errors import (
    BackendBusy,
    BackendError,
    BackendFailedRequest,
    BackendRejected,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from flask_inference_gateway.core.types import EmbeddingRequest, Timeouts
from flask_inference_gateway.upstream.openai import OpenAIBackend, build_payload
from tests.fake_ollama import MODEL_ERROR_MSG
from tests.fake_openai import FakeOpenAI
from tests.requests import typed, whole

URL = "http://vllm.test:8000"
TIMEOUTS = Timeouts(connect=1.5, first_token=30.0, between_tokens=20.0, total=600.0)
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def backend() -> OpenAIBackend:
    return OpenAIBackend(URL, timeouts=TIMEOUTS, pool_size=4)


def generate_request(**extra: Any) -> dict[str, Any]:
    return {"model": "qwen", "prompt": "Hi", "max_tokens": 16, "temperature": 0.2, **extra}


def sse(*events: dict[str, Any] | str) -> str:
    return "".join(f"data: {e if isinstance(e, str) else orjson.dumps(e).decode()}\n\n"
                   for e in events)


def chunk(text: str, finish: str | None = None, *, chat: bool = True) -> dict[str, Any]:
    choice: dict[str, Any] = ({"delta": {"content": text}} if chat else {"text": text})
    return {"object": "chunk", "choices": [{"index": 0, **choice, "finish_reason": finish}]}


def openai_error(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": status}}


def test_generate_payload_maps_options_and_leads_with_system() -> None:
    payload = build_payload(typed("generate", generate_request(top_p=0.9, top_k=5, stop=["\n"],
                                                         seed=7, system="Be brief",
                                                         ignored=None)))
    assert payload == {"model": "qwen", "stream": True, "prompt": "Be brief\n\nHi",
                       "max_tokens": 16, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
                       "stop": ["\n"], "seed": 7, "stream_options": {"include_usage": True}}


def test_stream_payload_asks_for_usage_and_carries_messages() -> None:
    payload = build_payload(typed("chat", {"model": "m", "messages": MESSAGES, "max_tokens": 3,
                                     "temperature": None}))
    assert payload == {"model": "m", "stream": True, "messages": MESSAGES, "max_tokens": 3,
                       "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("base", [URL, URL + "/", URL + "/v1", URL + "/v1/"],
                         ids=["bare", "slash", "v1", "v1-slash"])
def test_base_url_with_or_without_v1(base: str, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{URL}/v1/models", json={"data": []})
    backend = OpenAIBackend(base, timeouts=TIMEOUTS, pool_size=1)
    assert backend.base_url == URL
    assert backend.list_models() == []


@pytest.mark.parametrize(("api_key", "expected"), [("sk-test", "Bearer sk-test"), ("", None)],
                         ids=["key", "no-key"])
def test_authorization_only_with_a_key(api_key: str, expected: str | None,
                                       mocked: responses.RequestsMock) -> None:
    mocked.get(f"{URL}/v1/models", json={"data": []})
    mocked.post(f"{URL}/v1/completions", body=sse(chunk("x", "stop", chat=False), "[DONE]"))
    backend = OpenAIBackend(URL, timeouts=TIMEOUTS, pool_size=1, api_key=api_key)
    backend.list_models()
    whole(backend, typed("generate", generate_request()))
    assert [call.request.headers.get("Authorization") for call in mocked.calls] == [expected] * 2


def test_whole_answer_is_collected_from_a_stream(backend: OpenAIBackend,
                                                 mocked: responses.RequestsMock) -> None:
    mocked.post(f"{URL}/v1/completions", body=sse(
        {**chunk("Hello", chat=False), "model": "qwen-served"}, chunk(" there", chat=False),
        chunk("", "length", chat=False), {"choices": [], "usage": USAGE}, "[DONE]"))
    completion = whole(backend, typed("generate", generate_request()))
    assert (completion.model, completion.text, completion.done_reason) == (
        "qwen-served", "Hello there", "length")
    assert completion.usage.to_dict() == USAGE
    sent = json.loads(mocked.calls[0].request.body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # Its headers must come within the first-token timeout, as a stream's.
    assert mocked.calls[0].request.req_kwargs["timeout"] == (1.5, 30.0)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "generate"])
def test_stream_pieces_finish_reason_and_usage(backend: OpenAIBackend,
                                               mocked: responses.RequestsMock,
                                               chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = (": keep-alive comment\n\n" + "event: message\nid: 1\n"
            + sse(chunk("Hel", chat=chat), chunk("lo", chat=chat),
                  chunk("", "length", chat=chat), {"choices": [], "usage": USAGE}, "[DONE]"))
    mocked.post(URL + path, body=body.replace("\n\n", "\r\n\r\n", 1),
                content_type="text/event-stream")
    request = {"model": "qwen", "messages": MESSAGES} if chat else generate_request()
    stream = backend.stream(typed("chat" if chat else "generate", request))
    assert list(stream) == ["Hel", "lo"]
    assert stream.finished and stream.done_reason == "length"
    assert stream.usage.to_dict() == USAGE
    stream.close()
    sent = json.loads(mocked.calls[0].request.body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert mocked.calls[0].request.req_kwargs["timeout"] == (1.5, 30.0)


def test_stream_without_usage_chunk_counts_zero(backend: OpenAIBackend,
                                                mocked: responses.RequestsMock) -> None:
    mocked.post(f"{URL}/v1/completions",
                body=sse(chunk("a", chat=False), chunk("", "stop", chat=False), "[DONE]"))
    stream = backend.stream(typed("generate", generate_request()))
    assert list(stream) == ["a"]
    assert (stream.done_reason, stream.usage.to_dict()["total_tokens"]) == ("stop", 0)
    stream.close()


def test_finish_reason_survives_later_chunks(backend: OpenAIBackend,
                                             mocked: responses.RequestsMock) -> None:
    trailing = {"choices": [{"delta": {}, "finish_reason": None}], "usage": USAGE}
    mocked.post(f"{URL}/v1/chat/completions",
                body=sse(chunk("a"), chunk("", "stop"), trailing, "[DONE]"))
    stream = backend.stream(typed("chat", {"model": "qwen", "messages": MESSAGES}))
    assert list(stream) == ["a"]
    assert (stream.done_reason, stream.usage.to_dict()) == ("stop", USAGE)
    stream.close()


def test_lines_after_done_are_ignored(backend: OpenAIBackend,
                                      mocked: responses.RequestsMock) -> None:
    mocked.post(f"{URL}/v1/completions",
                body=sse(chunk("a", "stop", chat=False), "[DONE]", chunk("late", chat=False)))
    stream = backend.stream(typed("generate", generate_request()))
    assert list(stream) == ["a"]
    stream.close()


def test_error_event_mid_stream(backend: OpenAIBackend, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{URL}/v1/chat/completions",
                body=sse(chunk("a"), {"error": {"message": "CUDA out of memory", "code": 500}}))
    stream = backend.stream(typed("chat", {"model": "qwen", "messages": MESSAGES}))
    pieces: list[str] = []
    with pytest.raises(BackendError, match="CUDA out of memory") as raised:
        pieces.extend(stream)
    assert pieces == ["a"]  # the piece before the error still reached the client
    assert type(raised.value) is BackendError
    assert (stream.error, stream.finished) == ("backend_error", False)
    stream.close()


@pytest.mark.parametrize("body", [sse(chunk("a"), chunk("", "stop")), ""],
                         ids=["no-done", "empty-body"])
def test_stream_without_done_is_broken(backend: OpenAIBackend, mocked: responses.RequestsMock,
                                       body: str) -> None:
    mocked.post(f"{URL}/v1/chat/completions", body=body)
    stream = backend.stream(typed("chat", {"model": "qwen", "messages": MESSAGES}))
    with pytest.raises(BackendStreamBroken):
        list(stream)
    assert stream.error == "backend_stream_broken"
    stream.close()


def test_stream_line_that_is_not_json(backend: OpenAIBackend,
                                      mocked: responses.RequestsMock) -> None:
    mocked.post(f"{URL}/v1/chat/completions", body="data: {oops\n\n")
    stream = backend.stream(typed("chat", {"model": "qwen", "messages": MESSAGES}))
    with pytest.raises(BackendError, match="not JSON"):
        list(stream)
    stream.close()


@pytest.mark.parametrize(("event", "field"), [
    ({"choices": [{"delta": {"content": 5}}]}, "content"),
    ({"choices": [{"text": ["a"]}]}, "text"),
    ({"choices": [{"delta": {"content": "", "reasoning_content": 5}}]}, "reasoning_content"),
    ({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": {}}}]}}]},
     "arguments"),
    ({"choices": [{"delta": {"content": ""}, "finish_reason": {}}]}, "finish_reason"),
    ({"choices": [], "usage": {"prompt_tokens": "x"}}, "prompt_tokens"),
    ({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": -1}},
     "completion_tokens"),
    ({"choices": [], "usage": 5}, "usage"),
], ids=["content", "text", "reasoning", "arguments", "finish-reason", "count-text",
        "count-negative", "usage"])
def test_values_of_the_wrong_type_are_a_backend_error(backend: OpenAIBackend,
                                                      mocked: responses.RequestsMock,
                                                      event: dict[str, Any], field: str) -> None:
    mocked.post(f"{URL}/v1/chat/completions", body=sse(chunk("a"), event, "[DONE]"))
    stream = backend.stream(typed("chat", {"model": "qwen", "messages": MESSAGES}))
    with pytest.raises(BackendError, match=field):
        list(stream)
    stream.close()


@pytest.mark.parametrize("data", [[{"index": 0, "embedding": ["a", 1]}], [5],
                                  [{"index": "0", "embedding": [1.0]}]],
                         ids=["text-in-vector", "not-an-object", "text-index"])
def test_embeddings_of_the_wrong_shape_are_a_backend_error(
        backend: OpenAIBackend, mocked: responses.RequestsMock, data: list[Any]) -> None:
    mocked.post(f"{URL}/v1/embeddings", json={"object": "list", "data": data})
    with pytest.raises(BackendError):
        backend.embed(EmbeddingRequest(("one",), "qwen"))


UPSTREAM_FAILURES = [
    ({"status": 404, "json": openai_error("The model `x` does not exist.", 404)},
     ModelNotFound, "The model `x` does not exist."),
    ({"status": 503, "json": openai_error("overloaded", 503),
      "headers": {"Retry-After": "9"}}, BackendBusy, None),
    ({"status": 400, "json": openai_error("max_tokens is too large", 400)},
     BackendRejected, "max_tokens is too large"),
    ({"status": 500, "json": openai_error("engine died", 500)}, BackendFailedRequest,
     "The model backend answered 500: engine died"),
    ({"body": requests.ConnectionError("refused")}, BackendUnavailable, None),
    ({"body": requests.ReadTimeout("silent")}, BackendTimeout, None),
]
FAILURE_IDS = ["404", "503", "400", "500", "refused", "timeout"]


@pytest.mark.parametrize(("mock", "error", "message"), UPSTREAM_FAILURES, ids=FAILURE_IDS)
@pytest.mark.parametrize("call", ["complete", "stream"])
def test_upstream_failures_map_to_gateway_errors(
        backend: OpenAIBackend, mocked: responses.RequestsMock, call: str,
        mock: dict[str, Any], error: type, message: str | None) -> None:
    mocked.post(f"{URL}/v1/chat/completions", **mock)
    with pytest.raises(error) as raised:
        request = typed("chat", {"model": "x", "messages": MESSAGES})
        whole(backend, request) if call == "complete" else backend.stream(request)
    assert type(raised.value) is error
    if message is not None:
        assert raised.value.message == message
    if error is BackendBusy:
        assert raised.value.headers == {"Retry-After": "9"}
        assert raised.value.details == {"backend_message": "overloaded"}


def test_list_models_and_probe(backend: OpenAIBackend, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{URL}/v1/models", json={"object": "list", "data": [
        {"id": "qwen", "object": "model", "created": 7, "owned_by": "vllm"}, {"id": "tiny"}]})
    expected = [{"id": "qwen", "object": "model", "created": 7, "owned_by": "vllm",
                 "details": {}},
                {"id": "tiny", "object": "model", "created": 0, "owned_by": "openai",
                 "details": {}}]
    assert backend.list_models() == expected
    probe = backend.probe(2.0)
    assert probe.models == expected and probe.loaded == {"qwen", "tiny"}
    assert [call.request.req_kwargs["timeout"] for call in mocked.calls] == [(1.5, 30.0),
                                                                             (1.5, 2.0)]


@pytest.mark.parametrize("body", [{"object": "list"}, {"data": None}, ["qwen"]],
                         ids=["no-data", "null-data", "not-an-object"])
def test_model_list_without_data_is_empty(backend: OpenAIBackend,
                                          mocked: responses.RequestsMock, body: Any) -> None:
    mocked.get(f"{URL}/v1/models", json=body)
    assert backend.list_models() == []


def test_probe_failure_is_a_gateway_error(backend: OpenAIBackend,
                                          mocked: responses.RequestsMock) -> None:
    mocked.get(f"{URL}/v1/models", body=requests.ConnectionError("refused"))
    with pytest.raises(BackendUnavailable):
        backend.probe(1.0)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(tokens=5) as fake:
        yield fake


def test_stream_end_to_end_against_the_fake(fake_openai: FakeOpenAI) -> None:
    backend = OpenAIBackend(fake_openai.url + "/v1", timeouts=Timeouts(connect=1.0,
                                                                       first_token=5.0,
                                                                       between_tokens=5.0),
                            pool_size=2)
    stream = backend.stream(typed("chat", {"model": "sim", "messages": [
        {"role": "user", "content": "one two three"}]}))
    assert list(stream) == [f" tok{i}" for i in range(5)]
    stream.close()
    assert (stream.done_reason, stream.usage.to_dict()) == (
        "stop", {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    assert fake_openai.stats["completed"] == 1
    assert whole(backend, typed("generate", {"model": "sim", "prompt": "x",
                                             "max_tokens": 2})).text == " tok0 tok1"
    assert fake_openai.connections_accepted == 1  # the stream's connection was reused


def test_error_mid_stream_from_the_fake(fake_openai: FakeOpenAI) -> None:
    backend = OpenAIBackend(fake_openai.url, timeouts=Timeouts(connect=1.0, first_token=5.0,
                                                               between_tokens=5.0),
                            pool_size=2)
    stream = backend.stream(typed("generate", {"model": "sim", "prompt": "[[sim:error-after=2]]"}))
    pieces: list[str] = []
    with pytest.raises(BackendError, match=MODEL_ERROR_MSG):
        pieces.extend(stream)
    stream.close()
    assert pieces == [" tok0", " tok1"]
