"""The gateway under gunicorn + gevent in front of a real Ollama (../shared/realbackend).

The fakes are ours; these tests check the wire formats against the real
server: structured output constrained by its grammar (valid JSON even from the
tiny model's random weights), keep_alive unloading the model, token counts,
embeddings, and the real error bodies mapped to the gateway's errors.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.conftest import GatewayProcess, free_port
from tests.integration.realbackend import ABSENT, SERVE
from tests.sse import parse_sse

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MESSAGES = [{"role": "user", "content": "Where?"}]

pytestmark = pytest.mark.skipif(not SERVE.exists(), reason=ABSENT)


@pytest.fixture(scope="module")
def ollama() -> Iterator[str]:
    """Start the real Ollama with the tiny model on a free port."""
    port = free_port()
    started = subprocess.run([str(SERVE), "ollama", str(port)], capture_output=True, text=True,
                             timeout=60, check=False)
    if started.returncode != 0:
        pytest.fail(f"the real Ollama did not start:\n{started.stdout}{started.stderr}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(SERVE), "stop", str(port)], capture_output=True, timeout=30,
                       check=False)


@pytest.fixture
def gateway(ollama: str, gateway_server: Callable[..., GatewayProcess]) -> str:
    """Run the gateway in front of the real Ollama; return its URL."""
    return gateway_server(GATEWAY_OLLAMA_URL=ollama, GATEWAY_DEFAULT_MODEL="tiny").url


def post(url: str, body: dict, status: int = 200) -> requests.Response:
    """POST ``body`` and require ``status``."""
    response = requests.post(url, json=body, timeout=60)
    assert response.status_code == status, response.text
    return response


def ndjson(response: requests.Response) -> list[dict]:
    """Return the lines of an NDJSON answer."""
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_native_generate_counts_what_ollama_counts(gateway: str, ollama: str) -> None:
    body = {"prompt": "def add(a, b):", "max_tokens": 8, "seed": 3, "temperature": 0}
    ours = post(gateway + "/v1/generate", body).json()
    theirs = post(ollama + "/api/generate", {
        "model": "tiny", "prompt": body["prompt"], "stream": False,
        "options": {"num_predict": 8, "seed": 3, "temperature": 0}}).json()
    assert ours["text"] == theirs["response"]
    assert ours["usage"] == {"prompt_tokens": theirs["prompt_eval_count"],
                             "completion_tokens": theirs["eval_count"],
                             "total_tokens": theirs["prompt_eval_count"] + theirs["eval_count"]}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/stream", {"messages": MESSAGES, "max_tokens": 6}),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 6, "stream": True,
                              "model": "tiny", "stream_options": {"include_usage": True}}),
], ids=["native", "openai"])
def test_streams_end_with_the_real_usage(gateway: str, path: str, body: dict) -> None:
    raw = post(gateway + path, body).content.replace(b"data: [DONE]\n\n", b"")
    events = [data for _, data in parse_sse(raw) if data]
    usage = next(event["usage"] for event in reversed(events) if event.get("usage"))
    assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0


def test_ollama_stream_through_the_gateway(gateway: str) -> None:
    lines = ndjson(post(gateway + "/api/chat", {"model": "tiny", "messages": MESSAGES,
                                                "options": {"num_predict": 5}}))
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    assert all(line["done"] is False for line in lines[:-1])


@pytest.mark.parametrize(("path", "body", "content"), [
    ("/api/chat", {"model": "tiny", "messages": MESSAGES, "stream": False, "format": SCHEMA,
                   "options": {"num_predict": 48}},
     lambda answer: answer["message"]["content"]),
    ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 48,
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "place", "schema": SCHEMA}}},
     lambda answer: answer["choices"][0]["message"]["content"]),
    ("/v1/chat", {"messages": MESSAGES, "max_tokens": 48, "response_format": {
        "type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}},
     lambda answer: answer["message"]["content"]),
], ids=["ollama-format", "openai-response-format", "native-response-format"])
def test_structured_output_parses_against_the_schema(gateway: str, path: str, body: dict,
                                                     content: Callable[[dict], str]) -> None:
    answer = post(gateway + path, body).json()
    parsed = json.loads(content(answer))  # the grammar holds even for random weights
    assert isinstance(parsed, dict) and isinstance(parsed["city"], str)


def test_keep_alive_zero_unloads_the_model(gateway: str, ollama: str) -> None:
    post(gateway + "/api/generate", {"model": "tiny", "prompt": "x", "stream": False,
                                     "options": {"num_predict": 2}, "keep_alive": "10m"})
    assert "tiny:latest" in loaded_models(ollama)
    post(gateway + "/api/generate", {"model": "tiny", "prompt": "x", "stream": False,
                                     "options": {"num_predict": 2}, "keep_alive": 0})
    # Ollama unloads once the request has let go of the runner: shortly after.
    deadline = time.monotonic() + 10
    while "tiny:latest" in loaded_models(ollama):
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.1)


def test_an_empty_request_with_keep_alive_zero_unloads_the_model(gateway: str,
                                                                  ollama: str) -> None:
    post(gateway + "/api/generate", {"model": "tiny", "prompt": "x", "stream": False,
                                     "options": {"num_predict": 2}, "keep_alive": "10m"})
    assert "tiny:latest" in loaded_models(ollama)
    answer = post(gateway + "/api/generate", {"model": "tiny", "keep_alive": 0}).json()
    assert answer["done_reason"] == "unload"
    deadline = time.monotonic() + 10
    while "tiny:latest" in loaded_models(ollama):  # the ollama client's way to unload
        assert time.monotonic() < deadline, "the empty request did not unload the model"
        time.sleep(0.1)


def loaded_models(ollama: str) -> set[str]:
    """Return the models the real Ollama holds in memory (its /api/ps)."""
    return {m["name"] for m in requests.get(ollama + "/api/ps", timeout=10).json()["models"]}


def test_embeddings_through_both_surfaces(gateway: str) -> None:
    ours = post(gateway + "/api/embed", {"model": "tiny-embed", "input": ["a", "b"]}).json()
    openai = post(gateway + "/v1/embeddings", {"model": "tiny-embed", "input": ["a", "b"]}).json()
    assert len(ours["embeddings"]) == 2 and ours["prompt_eval_count"] > 0
    assert [item["embedding"] for item in openai["data"]] == ours["embeddings"]


@pytest.mark.parametrize(("path", "body", "status", "type_"), [
    ("/v1/generate", {"prompt": "x", "model": "nope"}, 404, "model_not_found"),
    ("/v1/chat", {"messages": MESSAGES, "model": "tiny-embed"}, 400, "backend_rejected"),
], ids=["unknown-model", "model-cannot-chat"])
def test_real_errors_map_to_the_gateways(gateway: str, path: str, body: dict, status: int,
                                         type_: str) -> None:
    error = post(gateway + path, body, status).json()["error"]
    assert error["type"] == type_ and error["message"]


def test_a_clients_bad_schema_does_not_close_the_backend(gateway: str) -> None:
    # Ollama answers 500 to a format that is no JSON Schema; the default
    # breaker opens after 3 failures in a row.
    bad = {"model": "tiny", "prompt": "x", "stream": False, "format": {"type": "bogus"},
           "options": {"num_predict": 2}}
    for _ in range(4):
        error = post(gateway + "/api/generate", bad, 502).json()["error"]
        assert "invalid JSON schema" in error
    post(gateway + "/v1/generate", {"prompt": "x", "max_tokens": 2})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "tools": [WEATHER],
                              "max_tokens": 4}),
    ("/api/chat", {"model": "tiny", "messages": MESSAGES, "tools": [WEATHER], "stream": False,
                   "options": {"num_predict": 4}}),
    ("/v1/chat", {"messages": MESSAGES, "tools": [WEATHER], "max_tokens": 4}),
], ids=["openai", "ollama", "native"])
def test_tools_are_accepted_by_the_real_ollama(gateway: str, path: str, body: dict) -> None:
    # tiny's template has a tools section; random weights call no tool by themselves.
    answer = post(gateway + path, body).json()
    assert answer.get("done") or answer.get("choices") or answer.get("done_reason")


def test_real_logprobs_spell_the_answer(gateway: str) -> None:
    answer = post(gateway + "/v1/chat/completions", {
        "model": "tiny", "messages": MESSAGES, "max_tokens": 4, "logprobs": True,
        "top_logprobs": 2}).json()["choices"][0]
    tokens = answer["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == answer["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/api/chat", {"model": "tiny", "messages": MESSAGES, "think": True, "stream": False}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES,
                              "reasoning_effort": "low"}, 400),
], ids=["ollama-think", "openai-reasoning-effort"])
def test_a_model_that_cannot_think_says_so(gateway: str, path: str, body: dict,
                                           status: int) -> None:
    error = post(gateway + path, body, status).json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert "does not support thinking" in message


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_an_ollama_client_reads_ollamas_own_lines(gateway: str, ollama: str, kind: str) -> None:
    # Passed on as sent: every field of every line, the final one's context and
    # durations included, as a direct request gets them.
    body = {"model": "tiny", "options": {"num_predict": 6, "seed": 7, "temperature": 0},
            **({"messages": MESSAGES} if kind == "chat" else {"prompt": "def add(a, b):"})}
    ours = ndjson(post(f"{gateway}/api/{kind}", body))
    theirs = ndjson(post(f"{ollama}/api/{kind}", body))
    assert [sorted(line) for line in ours] == [sorted(line) for line in theirs]
    text = (lambda line: line["message"]["content"]) if kind == "chat" else (
        lambda line: line["response"])
    assert [text(line) for line in ours] == [text(line) for line in theirs]
    assert ours[-1]["eval_count"] == theirs[-1]["eval_count"] == 6
