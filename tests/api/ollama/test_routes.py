"""The Ollama-compatible API (/api/*) against the fake Ollama and a fake vLLM: translation,
NDJSON streams, the native routes, model management for admin keys, errors in Ollama's shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from flask_inference_gateway.api.ollama.answers import OllamaChatResponse, OllamaGenerateResponse
from flask_inference_gateway.security.keys import KeyEntry, hash_key, write_key_file
from tests.conftest import TEST_KEY
from tests.fake_ollama import VERSION, FakeOllama
from tests.fake_openai import FakeOpenAI

ADMIN_KEY = "gw-admin-key-not-secret"
NARROW_KEY = "gw-narrow-key-not-secret"
PIECES = [f" tok{i}" for i in range(8)]
MANAGEMENT = [("POST", "/api/pull", {"model": "qwen2.5"}),
              ("POST", "/api/push", {"model": "sim"}),
              ("POST", "/api/create", {"model": "mine", "from": "sim"}),
              ("POST", "/api/copy", {"source": "sim", "destination": "sim2"}),
              ("DELETE", "/api/delete", {"model": "sim"})]
MANAGEMENT_IDS = ["pull", "push", "create", "copy", "delete"]


def body_for(kind: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    """Return an Ollama generate or chat body whose text is ``text``."""
    if kind == "chat":
        return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **extra}
    return {"model": "llama3.2", "prompt": text, **extra}


def lines_of(response: Any) -> list[dict[str, Any]]:
    """Return the NDJSON lines of a streamed answer, checking its type."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-ndjson"
    return [orjson.loads(line) for line in response.get_data().splitlines()]


def text_of(kind: str, line: dict[str, Any]) -> str:
    """Return the generated text a line carries."""
    return line["message"]["content"] if kind == "chat" else line["response"]


def ollama_error(response: Any, status: int) -> str:
    """Return the message of an error answer, checking its status and Ollama's shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


@pytest.fixture
def keyed_client(make_client: Callable[..., FlaskClient],
                 tmp_path: Path) -> Callable[..., FlaskClient]:
    """Return a factory of clients sending ``key``; the key file holds an admin and a narrow key."""
    write_key_file(str(tmp_path / "keys.json"), [
        KeyEntry("admin", hash_key(ADMIN_KEY), admin=True),
        KeyEntry("narrow", hash_key(NARROW_KEY), models=["sim"])])

    def factory(key: str = TEST_KEY, **overrides: Any) -> FlaskClient:
        client = make_client(**overrides)
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        return client

    return factory


@pytest.fixture
def fake_vllm() -> Iterator[FakeOpenAI]:
    """Run a fake OpenAI-compatible server."""
    with FakeOpenAI(tokens=8) as fake:
        yield fake


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_whole_answer_in_ollamas_shape(client: FlaskClient, fake_ollama: FakeOllama,
                                       kind: str) -> None:
    response = client.post(f"/api/{kind}", json=body_for(kind, stream=False))
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert text_of(kind, body) == "".join(PIECES)
    assert body["done"] is True and body["done_reason"] == "stop"
    assert (body["prompt_eval_count"], body["eval_count"]) == (1, 8)
    # The Ollama backend's own figures pass through: its load time, its context.
    assert body["total_duration"] > 0 and 0 < body["load_duration"] <= 1_000_000
    assert body.get("context") == ([1, 2, 3] if kind == "generate" else None)
    schema = OllamaChatResponse() if kind == "chat" else OllamaGenerateResponse()
    assert schema.validate(body) == {}
    assert fake_ollama.requests_seen[0]["stream"] is True  # assembled by the gateway


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None],
                         ids=["curl-d", "text", "none"])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show"])
def test_a_json_body_is_read_whatever_its_content_type(client: FlaskClient,
                                                       fake_ollama: FakeOllama, path: str,
                                                       content_type: str | None) -> None:
    # As Ollama itself: its docs' examples are `curl .../api/generate -d '{...}'`.
    kind = path.rsplit("/", 1)[1]
    body = {"model": "llama3.2", "input": "one"} if kind == "embed" else \
        {"model": "llama3.2"} if kind == "show" else body_for(kind, stream=False)
    response = client.post(path, data=json.dumps(body), content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    seen = fake_ollama.requests_seen[0]
    assert seen["model"] == "llama3.2"
    if kind in ("generate", "chat"):
        assert text_of(kind, response.get_json()) == "".join(PIECES)
        assert (seen.get("prompt"), seen.get("messages")) == (body.get("prompt"),
                                                              body.get("messages"))


@pytest.mark.parametrize(("path", "stray"), [
    ("/api/chat", {"prompt": 5}), ("/api/chat", {"system": 5}), ("/api/chat", {"images": 5}),
    ("/api/generate", {"messages": [{"role": "user", "content": "x"}]}),
    ("/api/generate", {"messages": "abc"}), ("/api/generate", {"tools": 5}),
], ids=["chat-prompt", "chat-system", "chat-images", "generate-messages",
        "generate-messages-text", "generate-tools"])
def test_the_other_routes_fields_are_left_to_ollama(client: FlaskClient, fake_ollama: FakeOllama,
                                                    path: str, stray: dict[str, Any]) -> None:
    # Ollama ignores them; so does the gateway, passing them on as sent.
    kind = path.rsplit("/", 1)[1]
    response = client.post(path, json={**body_for(kind, stream=False), **stray})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert text_of(kind, response.get_json()) == "".join(PIECES)
    seen = fake_ollama.requests_seen[0]
    assert all(seen[name] == value for name, value in stray.items())
    sent = body_for(kind, stream=False)
    assert seen.get("prompt" if kind == "generate" else "messages") == \
        sent.get("prompt" if kind == "generate" else "messages")


@pytest.mark.parametrize("flag", [{"stream": "yes"}, {"stream": 0}, {"think": "on"},
                                  {"logprobs": 1}], ids=["stream-text", "stream-number",
                                                         "think-text", "logprobs-number"])
def test_flags_are_json_booleans(client: FlaskClient, fake_ollama: FakeOllama,
                                 flag: dict[str, Any]) -> None:
    response = client.post("/api/chat", json={**body_for("chat", stream=False), **flag})
    assert response.status_code == 400 and next(iter(flag)) in response.get_json()["error"]
    assert fake_ollama.requests_seen == []


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_stream_is_ndjson_lines_then_a_done_line(client: FlaskClient, kind: str) -> None:
    response = client.post(f"/api/{kind}", json=body_for(kind))  # stream: true by default
    lines = lines_of(response)
    assert response.headers["X-Accel-Buffering"] == "no"
    assert [text_of(kind, line) for line in lines[:-1]] == PIECES
    assert all(line["done"] is False and line["model"] == "llama3.2" for line in lines[:-1])
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop" and text_of(kind, last) == ""
    assert last["eval_count"] == 8 and last["eval_duration"] >= 0
    schema = OllamaChatResponse() if kind == "chat" else OllamaGenerateResponse()
    assert all(schema.validate(line) == {} for line in lines)


@pytest.mark.parametrize(("body", "sent"), [
    ({"options": {"num_predict": 3, "temperature": 0.1, "top_p": 0.5, "top_k": 4, "seed": 7,
                  "stop": ["x"]}},
     {"num_predict": 3, "temperature": 0.1, "top_p": 0.5, "top_k": 4, "seed": 7, "stop": ["x"]}),
    ({}, {"num_predict": 4096}),
    ({"options": {"num_predict": -1}}, {"num_predict": 4096}),
    ({"system": "Be brief.", "keep_alive": "5m"}, {"num_predict": 4096}),
    ({"options": {"presence_penalty": 0.5, "frequency_penalty": -0.5, "repeat_penalty": 1.1,
                  "num_ctx": 2048}},
     {"num_predict": 4096, "presence_penalty": 0.5, "frequency_penalty": -0.5,
      "repeat_penalty": 1.1, "num_ctx": 2048}),
], ids=["every-option", "no-options", "no-limit", "system-and-keep-alive", "penalties-and-context"])
def test_options_are_translated(client: FlaskClient, fake_ollama: FakeOllama,
                                body: dict[str, Any], sent: dict[str, Any]) -> None:
    response = client.post("/api/generate", json=body_for("generate", stream=False, **body))
    assert response.status_code == 200, response.get_data(as_text=True)
    seen = fake_ollama.requests_seen[0]
    assert seen["options"] == sent
    assert seen.get("system") == body.get("system")
    # keep_alive decides how long the model holds GPU memory: it reaches the backend.
    assert seen.get("keep_alive") == body.get("keep_alive")


@pytest.mark.parametrize(("body", "field"), [
    (body_for("generate", format="yaml"), "format"),
    (body_for("generate", images=["not base64!"]), "images[0]"),
    (body_for("generate", think="extreme"), "think"),
    (body_for("generate", options={"num_ctx": 0}), "options.num_ctx"),
    (body_for("generate", options={"num_predict": 5000}), "options.num_predict"),
    (body_for("chat", tools=[{"type": "function"}]), "tools[0].function"),
    (body_for("chat", tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools[0].type"),
    (body_for("generate", logprobs=True, top_logprobs=21), "top_logprobs"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "not an object"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "hi", "images": [7]}]}, "messages[0].images[0]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
], ids=["bad-format", "bad-image", "bad-think", "bad-num-ctx", "over-max-tokens", "bad-tool",
        "tool-type", "top-logprobs", "call-arguments", "bad-message-image", "bad-role"])
def test_what_cannot_be_honoured_is_a_400_naming_it(client: FlaskClient, fake_ollama: FakeOllama,
                                                     body: dict[str, Any], field: str) -> None:
    kind = "chat" if "messages" in body else "generate"
    message = ollama_error(client.post(f"/api/{kind}", json=body), 400)
    assert message.startswith(f"invalid {field}: ")
    assert fake_ollama.requests_seen == []


def test_neutral_values_pass(client: FlaskClient) -> None:
    body = body_for("chat", tools=[], format="", think=False, stream=False)
    assert client.post("/api/chat", json=body).status_code == 200


def test_fields_the_gateway_does_not_know_reach_an_ollama_backend(
        client: FlaskClient, fake_ollama: FakeOllama) -> None:
    body = body_for("generate", stream=False, raw=True, suffix="end", context=[1, 2],
                    some_future_field={"a": 1}, options={"min_p": 0.05, "mirostat": 2})
    assert client.post("/api/generate", json=body).status_code == 200
    seen = fake_ollama.requests_seen[0]
    assert (seen["raw"], seen["suffix"], seen["context"]) == (True, "end", [1, 2])
    assert seen["some_future_field"] == {"a": 1}
    assert (seen["options"]["min_p"], seen["options"]["mirostat"]) == (0.05, 2)
    assert seen["stream"] is True and seen["options"]["num_predict"] == 4096  # policy holds


@pytest.mark.parametrize(("kind", "body", "reason"), [
    ("generate", {"model": "llama3.2"}, "load"),
    ("chat", {"model": "llama3.2", "messages": []}, "load"),
    ("generate", {"model": "llama3.2", "keep_alive": 0}, "unload"),
], ids=["generate", "chat", "unload"])
def test_nothing_to_generate_only_loads(client: FlaskClient, fake_ollama: FakeOllama, kind: str,
                                        body: dict[str, Any], reason: str) -> None:
    response = client.post(f"/api/{kind}", json=body)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["done"] is True and answer["done_reason"] == reason
    # A load waits for the first real request; an unload frees GPU memory now.
    seen = [(b["path"], b.get("keep_alive"), b.get("prompt")) for b in fake_ollama.requests_seen]
    assert seen == ([] if reason == "load" else [("/api/generate", 0, None)])


@pytest.mark.parametrize(("directive", "pieces"), [
    ("[[sim:error-after=2]]", 2), ("[[sim:die-after=3]]", 3),
], ids=["error-line", "dropped-connection"])
def test_failure_mid_stream_is_an_error_line(client: FlaskClient, directive: str,
                                             pieces: int) -> None:
    lines = lines_of(client.post("/api/generate", json=body_for("generate", f"hi {directive}")))
    assert [line["response"] for line in lines[:-1]] == PIECES[:pieces]
    assert set(lines[-1]) == {"error"} and lines[-1]["error"]


def test_backend_silence_sends_empty_lines(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(GATEWAY_HEARTBEAT_SECONDS=0.1)
    lines = lines_of(client.post("/api/chat",
                                 json=body_for("chat", "[[sim:tokens=2]] [[sim:itl=0.5]]")))
    texts = [line["message"]["content"] for line in lines[:-1]]
    assert texts[0] == " tok0" and texts[-1] == " tok1" and texts.count("") >= 2
    assert lines[-1]["done"] is True


def test_closing_the_stream_cancels_the_upstream(client: FlaskClient,
                                                 fake_ollama: FakeOllama) -> None:
    response = client.post("/api/generate", buffered=False, json=body_for(
        "generate", "[[sim:tokens=500]] [[sim:itl=0.02]]"))
    assert orjson.loads(next(response.response))["done"] is False
    response.close()
    assert fake_ollama.wait_for("cancelled", 1, timeout=3), fake_ollama.stats


@pytest.mark.parametrize("text", ["one", ["one", "two three"]], ids=["string", "list"])
def test_embed(client: FlaskClient, fake_ollama: FakeOllama, text: Any) -> None:
    response = client.post("/api/embed", json={"model": "llama3.2", "input": text})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["embeddings"]) == (1 if isinstance(text, str) else 2)
    assert body["model"] == "llama3.2" and body["prompt_eval_count"] >= 1


def test_tags_ps_version_and_show(client: FlaskClient, fake_ollama: FakeOllama) -> None:
    fake_ollama.loaded = [{"name": "sim:latest", "model": "sim:latest", "size_vram": 1}]
    tags = client.get("/api/tags").get_json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest", "sim:latest"]
    assert tags[0]["details"]["family"] == "llama" and tags[0]["size"] == 2019393189
    assert client.get("/api/ps").get_json() == {"models": fake_ollama.loaded}
    assert client.get("/api/version").get_json() == {"version": VERSION}
    shown = client.post("/api/show", json={"model": "llama3.2"}).get_json()
    assert shown["modelfile"] == "FROM llama3.2:latest" and shown["capabilities"]


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/api/generate", body_for("generate", model="nope"), 404),
    ("POST", "/api/show", {"model": "nope"}, 404),
    ("POST", "/api/generate", body_for("generate", model="llama3.2"), 403),
    ("POST", "/api/nope", {}, 404),
    ("GET", "/api/generate", None, 405),
], ids=["unknown-model", "show-unknown-model", "model-not-allowed", "unknown-path",
        "wrong-method"])
def test_errors_take_ollamas_shape(keyed_client: Callable[..., FlaskClient], method: str,
                                   path: str, body: Any, status: int) -> None:
    client = keyed_client(NARROW_KEY if status == 403 else TEST_KEY)
    message = ollama_error(client.open(path, method=method, json=body), status)
    if status == 404 and path != "/api/nope":
        assert "'nope' not found" in message or '"nope" not found' in message


@pytest.mark.parametrize(("send", "status"), [
    (lambda c: c.post("/api/chat", data="{", content_type="application/json"), 400),
    (lambda c: c.post("/api/chat", data="prompt=hi",
                      content_type="application/x-www-form-urlencoded"), 400),
    (lambda c: c.post("/api/chat", data="{}", content_type="text/plain",
                      headers={"Origin": "https://elsewhere.example"}), 415),
    (lambda c: c.post("/api/chat", json={"messages": [{"role": "user", "content": "x" * 300}]}),
     413),
], ids=["bad-json", "form-not-json", "browser-not-json", "too-large"])
def test_body_errors_take_ollamas_shape(make_client: Callable[..., FlaskClient],
                                        send: Callable[[FlaskClient], Any], status: int) -> None:
    ollama_error(send(make_client(GATEWAY_MAX_BODY_BYTES=200)), status)


def test_refusals_before_the_view_take_ollamas_shape(make_app: Any,
                                                     make_client: Callable[..., FlaskClient]
                                                     ) -> None:
    assert "API key" in ollama_error(make_app().test_client().get("/api/tags"), 401)
    limited = make_client(GATEWAY_RATE_LIMIT="1/minute")
    assert limited.get("/api/tags").status_code == 200
    response = limited.get("/api/tags")
    assert "Rate limit" in ollama_error(response, 429) and response.headers["Retry-After"]


@pytest.mark.parametrize(("overrides", "status"), [
    ({"GATEWAY_OLLAMA_URL": "http://127.0.0.1:9"}, 502),
    ({"GATEWAY_FIRST_TOKEN_TIMEOUT": 0.3}, 504),
], ids=["backend-down", "backend-timeout"])
def test_backend_failures_take_ollamas_shape(make_client: Callable[..., FlaskClient],
                                             overrides: dict[str, Any], status: int) -> None:
    client = make_client(**overrides)
    ollama_error(client.post("/api/chat", json=body_for("chat", "[[sim:hang]]")), status)


def test_busy_backend_is_a_503(client: FlaskClient, fake_ollama: FakeOllama) -> None:
    fake_ollama.fail_status = 503
    response = client.post("/api/generate", json=body_for("generate"))
    ollama_error(response, 503)
    assert response.headers["Retry-After"]


def test_gateway_routes_keep_their_own_error_shape(client: FlaskClient) -> None:
    error = client.post("/v1/generate", json={"prompt": "hi", "model": "nope"}).get_json()
    assert error["error"]["type"] == "model_not_found"


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT, ids=MANAGEMENT_IDS)
@pytest.mark.parametrize("auth_off", [False, True], ids=["normal-key", "auth-disabled"])
def test_model_management_needs_an_admin_key(keyed_client: Callable[..., FlaskClient],
                                             fake_ollama: FakeOllama, method: str, path: str,
                                             body: dict[str, Any], auth_off: bool) -> None:
    client = keyed_client(GATEWAY_AUTH_DISABLED=auth_off)
    assert "admin" in ollama_error(client.open(path, method=method, json=body), 403)
    assert fake_ollama.requests_seen == []


def test_admin_manages_models_on_every_backend(keyed_client: Callable[..., FlaskClient],
                                               fake_ollama: FakeOllama) -> None:
    with FakeOllama() as second:
        client = keyed_client(ADMIN_KEY, GATEWAY_OLLAMA_URL=f"{fake_ollama.url},{second.url}")
        lines = lines_of(client.post("/api/pull", json={"model": "qwen2.5"}))
        assert [line["status"] for line in lines].count("success") == 2
        whole = client.post("/api/pull", json={"model": "phi3", "stream": False})
        assert whole.get_json() == {"status": "success"}
        copied = client.post("/api/copy", json={"source": "qwen2.5", "destination": "q2"})
        assert copied.status_code == 200
        deleted = client.delete("/api/delete", json={"model": "qwen2.5"})
        assert deleted.status_code == 200
        for fake in (fake_ollama, second):
            assert {"phi3:latest", "q2"} <= set(fake.models)
            assert "qwen2.5:latest" not in fake.models
        gone = client.delete("/api/delete", json={"model": "qwen2.5"})
        assert "not found" in ollama_error(gone, 404)


def test_a_backend_failing_mid_management_ends_it(keyed_client: Callable[..., FlaskClient],
                                                  fake_ollama: FakeOllama) -> None:
    client = keyed_client(ADMIN_KEY, GATEWAY_OLLAMA_URL=f"{fake_ollama.url},http://127.0.0.1:9")
    lines = lines_of(client.post("/api/pull", json={"model": "qwen2.5"}))
    assert lines[-2] == {"status": "success"} and set(lines[-1]) == {"error"}
    whole = client.post("/api/pull", json={"model": "phi3", "stream": False})
    ollama_error(whole, 502)
    assert {"qwen2.5:latest", "phi3:latest"} <= set(fake_ollama.models)


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_openai_backend_is_translated(make_client: Callable[..., FlaskClient],
                                      fake_vllm: FakeOpenAI, kind: str) -> None:
    client = make_client(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=fake_vllm.url + "/v1")
    lines = lines_of(client.post(f"/api/{kind}", json=body_for(kind)))
    assert "".join(text_of(kind, line) for line in lines[:-1]) == "".join(PIECES)
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 8
    assert fake_vllm.requests_seen[0]["path"].startswith("/v1/")


def test_openai_backend_models_are_listed_and_shown(make_client: Callable[..., FlaskClient],
                                                    fake_vllm: FakeOpenAI) -> None:
    client = make_client(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=fake_vllm.url + "/v1")
    tags = client.get("/api/tags").get_json()["models"]
    assert [m["name"] for m in tags] == fake_vllm.models and all(m["digest"] for m in tags)
    assert client.post("/api/show", json={"model": "sim:latest"}).status_code == 200
    assert client.get("/api/ps").get_json() == {"models": []}
    assert client.get("/api/version").get_json()["version"]
    ollama_error(client.post("/api/pull", json={"model": "x"}), 403)
