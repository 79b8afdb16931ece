"""Streams passed on as the backend sent them: frames, and the few lines the gateway parses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
import responses

from flask_inference_gateway.core.errors import BackendError
from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.upstream import openai, verbatim
from flask_inference_gateway.upstream.ollama import OllamaBackend
from flask_inference_gateway.upstream.openai import OpenAIBackend
from flask_inference_gateway.upstream.stream import TokenStream
from tests.requests import typed

URL = "http://backend.test:8000"
TIMEOUTS = Timeouts(connect=1.5, first_token=30.0, between_tokens=20.0, total=600.0)
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
MESSAGES = [{"role": "user", "content": "Hi"}]


def data(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj)


def chunk(delta: dict[str, Any], finish: str | None = None, model: str = "qwen") -> bytes:
    return data({"id": "chatcmpl-backend", "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


ROLE = chunk({"role": "assistant", "content": ""})
TOKENS = [chunk({"content": "Hel"}), chunk({"content": "lo"})]
FINISH = chunk({}, "length")
USAGE_CHUNK = data({"id": "chatcmpl-backend", "choices": [], "usage": USAGE})


def openai_stream(mocked: responses.RequestsMock, lines: list[bytes], *,
                  include_usage: bool = False, model: str = "qwen") -> TokenStream:
    body = b"".join(line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    mocked.post(f"{URL}/v1/chat/completions", body=body, content_type="text/event-stream")
    request = replace(typed("chat", {"model": model, "messages": MESSAGES}),
                      passthrough="openai", include_usage=include_usage)
    return OpenAIBackend(URL, timeouts=TIMEOUTS, pool_size=2).stream(request)


def frames(stream: TokenStream) -> list[bytes]:
    with stream:
        stream.prime()
        return [frame for batch in stream.batches(20.0) for frame in batch]


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_openai_chunks_pass_as_sent(mocked: responses.RequestsMock,
                                    include_usage: bool) -> None:
    stream = openai_stream(mocked, [ROLE, *TOKENS, FINISH, USAGE_CHUNK],
                           include_usage=include_usage)
    got = frames(stream)
    # The role chunk waits for the first token, so the stream primes on a token.
    assert got[0] == ROLE + b"\n\n" + TOKENS[0] + b"\n\n"
    assert got[1:3] == [TOKENS[1] + b"\n\n", FINISH + b"\n\n"]
    assert got[3:] == ([USAGE_CHUNK + b"\n\n"] if include_usage else [])
    assert stream.verbatim and stream.finished and stream.done_reason == "length"
    assert stream.usage.to_dict() == USAGE and stream.final["usage"] == USAGE


def test_only_the_lines_that_matter_are_parsed(mocked: responses.RequestsMock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = openai.parse_object
    monkeypatch.setattr(openai, "parse_object", lambda line: parsed.append(line) or real(line))
    tokens = [chunk({"content": f"t{i}"}) for i in range(20)]
    frames(openai_stream(mocked, [ROLE, *tokens, FINISH, USAGE_CHUNK]))
    # The first (the model's name), the finish and the usage chunk: not the 20 tokens.
    assert [line[5:].strip() for line in (ROLE, FINISH, USAGE_CHUNK)] == parsed


def test_a_backend_that_names_the_model_otherwise_is_renamed(
        mocked: responses.RequestsMock) -> None:
    lines = [chunk({"content": "a"}, model="/models/qwen.gguf"),
             chunk({"content": "b"}, model="/models/qwen.gguf")]
    got = b"".join(frames(openai_stream(mocked, lines)))
    assert b"/models/qwen.gguf" not in got and got.count(b'"model":"qwen"') == 2


def test_an_error_line_is_raised_not_relayed(mocked: responses.RequestsMock) -> None:
    error = data({"error": {"message": "out of memory", "type": "server_error"}})
    stream = openai_stream(mocked, [ROLE, TOKENS[0], error])
    with stream, pytest.raises(BackendError, match="out of memory"):
        stream.prime()
        for _ in stream.batches(20.0):
            pass


def test_spaced_json_is_parsed_the_slow_way_and_still_relayed(
        mocked: responses.RequestsMock) -> None:
    spaced = b'data: {"model": "qwen", "choices": [{"index": 0, "delta": {"content": "x"}, ' \
             b'"finish_reason": null}]}'
    got = frames(openai_stream(mocked, [spaced, spaced, FINISH]))
    assert got == [spaced + b"\n\n", spaced + b"\n\n", FINISH + b"\n\n"]


def test_without_passthrough_the_chunks_are_decoded(mocked: responses.RequestsMock) -> None:
    stream = openai_stream(mocked, [ROLE, *TOKENS, FINISH])
    stream.close()
    request = typed("chat", {"model": "qwen", "messages": MESSAGES})
    plain = OpenAIBackend(URL, timeouts=TIMEOUTS, pool_size=2).stream(request)
    with plain:
        assert not plain.verbatim and list(plain) == ["Hel", "lo"]


def line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


OLLAMA_FIRST = line({"model": "tiny", "created_at": "t0", "response": "", "done": False})
OLLAMA_TOKENS = [line({"model": "tiny", "created_at": f"t{i}", "response": word, "done": False})
                 for i, word in enumerate(["Hel", "lo"], 1)]
OLLAMA_LAST = line({"model": "tiny", "created_at": "t3", "response": "", "done": True,
                    "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2,
                    "context": [1, 2, 3]})


def ollama_stream(mocked: responses.RequestsMock, lines: list[bytes]) -> TokenStream:
    mocked.post(f"{URL}/api/generate", body=b"".join(x + b"\n" for x in lines),
                content_type="application/x-ndjson")
    request = replace(typed("generate", {"model": "tiny", "prompt": "Hi"}), passthrough="ollama")
    return OllamaBackend(URL, timeouts=TIMEOUTS, pool_size=2).stream(request)


def test_ollama_lines_pass_as_sent(mocked: responses.RequestsMock,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = verbatim.parse_object
    monkeypatch.setattr(verbatim, "parse_object", lambda x: parsed.append(x) or real(x))
    stream = ollama_stream(mocked, [OLLAMA_FIRST, *OLLAMA_TOKENS, OLLAMA_LAST])
    got = frames(stream)
    assert got == [OLLAMA_FIRST + b"\n" + OLLAMA_TOKENS[0] + b"\n", OLLAMA_TOKENS[1] + b"\n",
                   OLLAMA_LAST + b"\n"]
    assert stream.finished and stream.done_reason == "stop"
    assert stream.usage.to_dict()["total_tokens"] == 7 and stream.final["context"] == [1, 2, 3]
    assert parsed == [OLLAMA_FIRST, OLLAMA_LAST]


def test_an_ollama_error_line_is_raised(mocked: responses.RequestsMock) -> None:
    stream = ollama_stream(mocked, [OLLAMA_TOKENS[0], line({"error": "model crashed"})])
    with stream, pytest.raises(BackendError, match="model crashed"):
        stream.prime()
        for _ in stream.batches(20.0):
            pass
