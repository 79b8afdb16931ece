"""The Ollama adapter, against mocked HTTP (responses)."""

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
    BackendRejected,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from flask_inference_gateway.core.types import EmbeddingRequest, Timeouts
from flask_inference_gateway.upstream.ollama import (
    LineDecoder,
    OllamaBackend,
    build_payload,
    created_at,
    model_info,
)
from flask_inference_gateway.upstream.stream import TokenStream
from tests.conftest import MOCK_URL
from tests.requests import typed, whole

TIMEOUTS = Timeouts(connect=1.5, first_token=30.0, between_tokens=20.0, total=600.0)
FINAL = {"done": True, "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2}


@pytest.fixture
def backend() -> OllamaBackend:
    return OllamaBackend(MOCK_URL, timeouts=TIMEOUTS, pool_size=8)


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def generate_request(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "prompt": "Hi", "max_tokens": 16, "temperature": 0.2, **extra}


def test_payload_maps_options_to_ollama_names() -> None:
    payload = build_payload(typed("generate", generate_request(top_p=0.9, top_k=5, stop=["\n"],
                                                         seed=7, system="Be brief")))
    assert payload == {"model": "llama3.2", "prompt": "Hi", "system": "Be brief",
                       "stream": True,
                       "options": {"num_predict": 16, "temperature": 0.2, "top_p": 0.9,
                                   "top_k": 5, "stop": ["\n"], "seed": 7}}


def test_chat_payload_carries_messages() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    payload = build_payload(typed("chat", {"model": "m", "messages": messages,
                                           "max_tokens": 3}))
    assert payload == {"model": "m", "messages": messages, "stream": True,
                       "options": {"num_predict": 3}}


def test_complete_generate(backend: OllamaBackend, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/generate",
                json={"model": "llama3.2", "response": "Hello there", **FINAL})
    completion = whole(backend, typed("generate", generate_request()))
    assert (completion.text, completion.done_reason) == ("Hello there", "stop")
    assert completion.usage.to_dict() == {"prompt_tokens": 4, "completion_tokens": 2,
                                          "total_tokens": 6}
    sent = json.loads(mocked.calls[0].request.body)
    assert sent["stream"] is True and sent["options"]["num_predict"] == 16


def test_complete_chat(backend: OllamaBackend, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/chat", json={
        "model": "llama3.2", "message": {"role": "assistant", "content": "Yes"}, **FINAL})
    completion = whole(backend, typed("chat", {"model": "llama3.2", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "Ok?"}]}))
    assert completion.text == "Yes"


def test_every_call_passes_connect_and_read_timeouts(
        backend: OllamaBackend, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/generate", json={"response": "x", **FINAL})
    mocked.post(f"{MOCK_URL}/api/chat", body=ndjson({"message": {"content": "x"}}, FINAL))
    mocked.get(f"{MOCK_URL}/api/tags", json={"models": []})
    mocked.get(f"{MOCK_URL}/api/version", json={"version": "0.12.0"})
    whole(backend, typed("generate", generate_request()))
    stream = backend.stream(typed("chat", {"model": "m", "messages": []}))
    list(stream)
    stream.close()
    backend.list_models()
    backend.version(2.0)
    timeouts = [call.request.req_kwargs["timeout"] for call in mocked.calls]
    # A whole answer is streamed too: its headers, like a stream's, must come
    # within the first-token timeout.
    assert timeouts == [(1.5, 30.0), (1.5, 30.0), (1.5, 30.0), (2.0, 2.0)]


def test_stream_yields_pieces_then_usage(backend: OllamaBackend,
                                         mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/generate",
                body=ndjson({"response": "Hel"}, {"response": "lo"}, {"response": "", **FINAL}))
    stream = backend.stream(typed("generate", generate_request()))
    assert list(stream) == ["Hel", "lo"]
    assert stream.done_reason == "stop" and stream.usage.completion_tokens == 2
    assert json.loads(mocked.calls[0].request.body)["stream"] is True
    stream.close()


class FakeResponse:
    """A streamed response whose body arrives in the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.closed = chunks, False
        self.raw, self.headers = None, {}

    def iter_content(self, chunk_size: int | None) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("chunks", [
    [b'{"response":"a"}\n{"response":"b"}\n', b'{"done":true,"eval_count":2}\n'],
    [b'{"respo', b'nse":"a"}\n{"response"', b':"b"}\n{"done":true,"eval_count":2}'],
    [b'{"response":"a"}\n\n', b'{"response":"b"}\n{"done":true,"eval_count":2}\n\n'],
], ids=["whole-lines", "split-lines", "blank-lines"])
def test_stream_reassembles_lines_across_chunks(chunks: list[bytes]) -> None:
    stream = TokenStream(FakeResponse(chunks), "m", LineDecoder(), Timeouts())  # type: ignore[arg-type]
    assert list(stream) == ["a", "b"]
    assert stream.usage.completion_tokens == 2


@pytest.mark.parametrize(("chunks", "error"), [
    ([b'{"response":"a"}\n', b'{"error":"CUDA out of memory"}\n'], BackendError),
    ([b'{"response":"a"}\n'], BackendStreamBroken),
    ([b'{"response":"a"}\n', b"not json\n"], BackendError),
    ([b'["a list"]\n'], BackendError),
], ids=["error-line", "no-final-line", "garbage", "not-an-object"])
def test_stream_failures_raise(chunks: list[bytes], error: type) -> None:
    stream = TokenStream(FakeResponse(chunks), "m", LineDecoder(), Timeouts())  # type: ignore[arg-type]
    with pytest.raises(error):
        list(stream)


@pytest.mark.parametrize(("line", "field"), [
    ({"response": 5}, "response"),
    ({"message": {"role": "assistant", "content": {"a": 1}}}, "content"),
    ({"response": "", "thinking": 5}, "thinking"),
    ({"response": "", "tool_calls": [{"function": {"name": 7}}]}, "name"),
    ({"response": "", "tool_calls": [{"function": "f"}]}, "function"),
    ({"response": "", "logprobs": 5}, "logprobs"),
    ({"response": "", **FINAL, "done_reason": {}}, "done_reason"),
    ({"response": "", **FINAL, "prompt_eval_count": "x"}, "prompt_eval_count"),
    ({"response": "", **FINAL, "eval_count": -3}, "eval_count"),
    ({"response": "", **FINAL, "model": 5}, "model"),
], ids=["response", "content", "thinking", "tool-name", "tool-function", "logprobs",
        "done-reason", "count-text", "count-negative", "model"])
def test_values_of_the_wrong_type_are_a_backend_error(line: dict[str, Any], field: str) -> None:
    lines = ndjson({"response": "a"}, line, FINAL)
    stream = TokenStream(FakeResponse([lines]), "m", LineDecoder(), Timeouts())  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=field):
        list(stream)


def test_embeddings_that_are_not_numbers_are_a_backend_error(
        backend: OllamaBackend, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/embed", json={"model": "m", "embeddings": [["a", 1]]})
    with pytest.raises(BackendError, match="lists of numbers"):
        backend.embed(EmbeddingRequest(("one",), "m"))


def test_error_line_message_reaches_the_client() -> None:
    stream = TokenStream(FakeResponse([b'{"error":"CUDA out of memory"}\n']), "m",
                         LineDecoder(), Timeouts())  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="CUDA out of memory"):
        list(stream)


@pytest.mark.parametrize(("finished", "aborted"), [(True, False), (False, True)],
                         ids=["read-whole-keeps-connection", "unfinished-aborts"])
def test_close_is_idempotent(finished: bool, aborted: bool,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("flask_inference_gateway.upstream.stream.abort_response",
                        lambda r: calls.append("abort"))
    response = FakeResponse([])
    stream = TokenStream(response, "m", LineDecoder(), Timeouts())  # type: ignore[arg-type]
    stream._body.complete = finished
    stream.close()
    stream.close()
    assert calls == (["abort"] if aborted else [])
    assert response.closed is finished


UPSTREAM_FAILURES = [
    ({"body": requests.ConnectionError("refused")}, BackendUnavailable),
    ({"body": requests.ConnectTimeout("slow")}, BackendTimeout),
    ({"body": requests.ReadTimeout("silent")}, BackendTimeout),
    ({"status": 404, "json": {"error": 'model "x" not found'}}, ModelNotFound),
    ({"status": 503, "json": {"error": "busy"}}, BackendBusy),
    ({"status": 400, "json": {"error": "bad option"}}, BackendRejected),
    ({"status": 500, "json": {"error": "boom"}}, BackendError),
]
FAILURE_IDS = ["refused", "connect-timeout", "read-timeout", "404", "503", "400", "500"]


@pytest.mark.parametrize(("mock", "error"), UPSTREAM_FAILURES, ids=FAILURE_IDS)
@pytest.mark.parametrize("kind", ["complete", "stream"])
def test_upstream_failures_map_to_gateway_errors(
        backend: OllamaBackend, mocked: responses.RequestsMock, kind: str,
        mock: dict[str, Any], error: type) -> None:
    mocked.post(f"{MOCK_URL}/api/generate", **mock)
    with pytest.raises(error):
        request = typed("generate", generate_request())
        whole(backend, request) if kind == "complete" else backend.stream(request)


def test_whole_answer_that_is_not_json(backend: OllamaBackend,
                                       mocked: responses.RequestsMock) -> None:
    mocked.post(f"{MOCK_URL}/api/generate", body=b"<html>")
    with pytest.raises(BackendError, match="not JSON"):
        whole(backend, typed("generate", generate_request()))


def test_list_models_and_version(backend: OllamaBackend, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{MOCK_URL}/api/tags", json={"models": [{"name": "llama3.2:latest"}]})
    mocked.get(f"{MOCK_URL}/api/version", json={"version": "0.12.0"})
    assert backend.list_models() == [model_info({"name": "llama3.2:latest"})]
    assert backend.version(1.0) == "0.12.0"


def test_each_process_gets_its_own_session(backend: OllamaBackend,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = backend.session
    assert backend.session is first
    monkeypatch.setattr("flask_inference_gateway.upstream.client.os.getpid", lambda: -1)
    assert backend.session is not first


def test_session_pool_matches_worker_connections(backend: OllamaBackend) -> None:
    adapter = backend.session.get_adapter(MOCK_URL)
    assert adapter._pool_maxsize == 8
    assert adapter.max_retries.total == 0


def test_model_info_is_openai_shaped() -> None:
    info = model_info({"name": "m:latest", "modified_at": "2026-01-01T00:00:00Z", "size": 5,
                       "digest": "sha256:0", "details": {"family": "llama"}})
    assert info == {"id": "m:latest", "object": "model", "created": 1767225600,
                    "owned_by": "ollama",
                    "details": {"family": "llama", "size": 5, "digest": "sha256:0",
                                "modified_at": "2026-01-01T00:00:00Z"}}


@pytest.mark.parametrize("raw", [None, "", "yesterday"], ids=["none", "empty", "garbage"])
def test_unreadable_dates_are_zero(raw: str | None) -> None:
    assert created_at(raw) == 0
