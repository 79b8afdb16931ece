"""/v1/generate/ws and /v1/chat/ws on werkzeug's threaded server, with a real WebSocket client."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from flask import Flask
from werkzeug.serving import make_server

from flask_inference_gateway import InferenceGateway
from flask_inference_gateway.api.native import websocket as ws_module
from flask_inference_gateway.security.keys import KeyEntry, hash_key, write_key_file
from tests.conftest import TEST_KEY
from tests.fake_ollama import THOUGHTS, TOOL_ARGUMENTS, FakeOllama
from tests.ws import (
    WS_ROUTES,
    connect,
    exchange,
    hang_up,
    read_all,
    read_until_token,
    request_for,
)

BEARER = {"Authorization": f"Bearer {TEST_KEY}"}
KINDS = list(WS_ROUTES)
Serve = Callable[[Flask], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Return a starter that serves an app on a free port; returns its ws:// base URL."""
    servers = []

    def start(app: Flask) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"ws://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def url(make_app: Callable[..., Flask], serve: Serve) -> str:
    """Serve the default test app (auth on, TEST_KEY valid)."""
    return serve(make_app())


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 10 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_stream_sends_tokens_then_done_and_closes(url: str, fake_ollama: FakeOllama,
                                                  kind: str) -> None:
    session = exchange(url + WS_ROUTES[kind], request_for(kind, "Hi", max_tokens=4), BEARER)
    assert session.text == " tok0 tok1 tok2 tok3"
    assert {m["type"] for m in session.messages[:-1]} == {"token"}
    done = session.last
    assert done["type"] == "done" and done["done_reason"] == "length", done
    assert done["usage"]["completion_tokens"] == 4
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + 4
    assert session.close_code == 1000
    assert fake_ollama.requests_seen[0]["stream"] is True


def test_thinking_and_tool_calls_reach_a_websocket_client(url: str) -> None:
    tool = {"type": "function", "function": {"name": "get_weather"}}
    body = {"messages": [{"role": "user", "content": "[[sim:think]] [[sim:tool=get_weather]]"}],
            "tools": [tool], "think": True}
    session = exchange(url + WS_ROUTES["chat"], body, BEARER)
    thinking = [m["text"] for m in session.messages if m["type"] == "thinking"]
    assert "".join(thinking) == "".join(THOUGHTS)
    assert session.messages[0]["type"] == "thinking"  # as the model thought: first
    done = session.last
    assert done["done_reason"] == "tool_calls"
    assert done["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather",
                                                 "arguments": TOOL_ARGUMENTS}


@pytest.mark.parametrize(("headers", "extra"), [
    (BEARER, {}),
    ({"X-API-Key": TEST_KEY}, {}),
    ({}, {"api_key": TEST_KEY}),
    (BEARER, {"api_key": "not-a-key"}),
], ids=["bearer-header", "x-api-key-header", "first-message", "header-wins"])
def test_key_in_a_header_or_the_first_message(url: str, headers: dict[str, str],
                                              extra: dict[str, Any]) -> None:
    session = exchange(url + WS_ROUTES["generate"], request_for("generate", **extra), headers)
    assert session.last["type"] == "done", session.messages


@pytest.mark.parametrize(("headers", "extra", "message"), [
    ({}, {}, "Send your API key"),
    ({}, {"api_key": "not-a-key"}, "not valid"),
    ({}, {"api_key": 12345}, "not valid"),
    ({"Authorization": "Bearer not-a-key"}, {"api_key": TEST_KEY}, "not valid"),
], ids=["missing", "wrong-in-message", "not-a-string", "wrong-in-header"])
def test_bad_key_is_a_401_error_message(url: str, fake_ollama: FakeOllama,
                                        headers: dict[str, str], extra: dict[str, Any],
                                        message: str) -> None:
    session = exchange(url + WS_ROUTES["chat"], request_for("chat", **extra), headers)
    [error] = session.messages
    assert error["type"] == "error" and error["error"]["status"] == 401, error
    assert error["error"]["type"] == "unauthorized" and message in error["error"]["message"]
    assert session.close_code == 1000
    assert fake_ollama.requests_seen == []


@pytest.mark.parametrize(("request_", "status", "type_", "fields"), [
    ("{not json", 400, "invalid_json", None),
    (json.dumps(["a", "list"]), 422, "validation_error", {"_schema"}),
    (json.dumps({"prompt": ""}), 422, "validation_error", {"prompt"}),
    (json.dumps({"prompt": "hi", "colour": "red"}), 422, "validation_error", {"colour"}),
    (json.dumps({"prompt": "hi", "max_tokens": "many"}), 422, "validation_error",
     {"max_tokens"}),
], ids=["invalid-json", "not-an-object", "empty-prompt", "unknown-field", "wrong-type"])
def test_invalid_request_is_an_error_message(url: str, fake_ollama: FakeOllama, request_: str,
                                             status: int, type_: str,
                                             fields: set[str] | None) -> None:
    session = exchange(url + WS_ROUTES["generate"], request_, BEARER)
    [error] = session.messages
    assert error["type"] == "error", error
    assert (error["error"]["status"], error["error"]["type"]) == (status, type_)
    if fields:
        assert set(error["error"]["fields"]) == fields
    assert fake_ollama.requests_seen == []


def test_model_the_key_may_not_use_is_403(make_app: Callable[..., Flask], serve: Serve,
                                          tmp_path: Path) -> None:
    key_file = tmp_path / "limited.json"
    write_key_file(str(key_file), [KeyEntry("limited", hash_key("gw-limited"), models=["sim"])])
    url = serve(make_app(GATEWAY_API_KEYS="", GATEWAY_API_KEYS_FILE=str(key_file)))
    allowed = exchange(url + WS_ROUTES["generate"],
                       request_for("generate", model="sim", api_key="gw-limited"))
    assert allowed.last["type"] == "done"
    refused = exchange(url + WS_ROUTES["generate"],
                       request_for("generate", model="llama3.2", api_key="gw-limited"))
    assert refused.last["error"]["status"] == 403
    assert refused.last["error"]["allowed_models"] == ["sim"]


@pytest.mark.parametrize(("directive", "status", "type_", "text"), [
    ("[[sim:status=503]]", 503, "backend_busy", ""),
    ("[[sim:status=404]]", 404, "model_not_found", ""),
    ("[[sim:die-after=3]]", 502, "backend_stream_broken", " tok0 tok1 tok2"),
    ("[[sim:error-after=2]]", 502, "backend_error", " tok0 tok1"),
], ids=["busy", "model-missing", "dropped-connection", "error-line"])
def test_backend_fault_is_an_error_message(url: str, directive: str, status: int, type_: str,
                                           text: str) -> None:
    session = exchange(url + WS_ROUTES["generate"], request_for("generate", f"Hi {directive}"),
                       BEARER)
    assert session.text == text
    error = session.last
    assert error["type"] == "error", session.messages
    assert (error["error"]["status"], error["error"]["type"]) == (status, type_)
    if status == 503:
        assert error["error"]["retry_after"] == "1"
    assert session.close_code == 1000


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_cancel_stops_the_upstream_at_once(url: str, fake_ollama: FakeOllama,
                                           kind: str) -> None:
    ws = connect(url + WS_ROUTES[kind], BEARER)
    try:
        ws.send(json.dumps(request_for(kind, "[[sim:tokens=500]] [[sim:itl=0.02]]")))
        read_until_token(ws)
        cancelled_at = time.monotonic()
        ws.send(json.dumps({"type": "cancel"}))
        session = read_all(ws)
    finally:
        hang_up(ws)
    assert fake_ollama.wait_for("cancelled", 1, timeout=2), fake_ollama.stats
    assert time.monotonic() - cancelled_at < 1.5
    done = session.last
    assert done["type"] == "done" and done["done_reason"] == "cancelled", done
    assert 1 <= done["usage"]["completion_tokens"] < 500
    assert session.close_code == 1000
    assert fake_ollama.stats["completed"] == 0


@pytest.mark.parametrize("leave", ["close-frame", "dropped-tcp"])
def test_client_leaving_stops_the_upstream(url: str, fake_ollama: FakeOllama,
                                           leave: str) -> None:
    ws = connect(url + WS_ROUTES["generate"], BEARER)
    ws.send(json.dumps(request_for("generate", "[[sim:tokens=500]] [[sim:itl=0.02]]")))
    read_until_token(ws)
    if leave == "close-frame":
        ws.close(timeout=1)
    else:
        ws.shutdown()  # no closing handshake: the TCP connection just ends
    assert fake_ollama.wait_for("cancelled", 1, timeout=3), fake_ollama.stats
    assert fake_ollama.stats["completed"] == 0


def test_other_messages_during_a_generation_are_ignored(url: str) -> None:
    ws = connect(url + WS_ROUTES["generate"], BEARER)
    try:
        ws.send(json.dumps(request_for("generate", "[[sim:tokens=20]] [[sim:itl=0.01]]")))
        ws.send("not json")
        ws.send(json.dumps({"type": "hello"}))
        session = read_all(ws)
    finally:
        hang_up(ws)
    assert session.last["type"] == "done" and session.last["usage"]["completion_tokens"] == 20


def test_backend_silence_is_bridged_by_pings(make_app: Callable[..., Flask],
                                             serve: Serve) -> None:
    url = serve(make_app(GATEWAY_HEARTBEAT_SECONDS=0.1))
    ws = connect(url + WS_ROUTES["generate"], BEARER)
    try:
        ws.send(json.dumps(request_for("generate", "[[sim:ttft=0.5]] [[sim:tokens=2]]")))
        opcodes = []
        while not opcodes or opcodes[-1] != websocket.ABNF.OPCODE_CLOSE:
            opcodes.append(ws.recv_data_frame(True)[0])  # answers each ping with a pong
    finally:
        hang_up(ws)
    # Pings while the backend is silent, before the first token.
    assert opcodes.index(websocket.ABNF.OPCODE_TEXT) >= 2, opcodes
    assert set(opcodes[:2]) == {websocket.ABNF.OPCODE_PING}, opcodes


def test_silent_client_gets_an_error(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "REQUEST_WAIT_SECONDS", 0.2)
    ws = connect(url + WS_ROUTES["generate"], BEARER)
    try:
        session = read_all(ws, limit_s=5)
    finally:
        hang_up(ws)
    assert session.last["error"]["status"] == 400
    assert "No request message" in session.last["error"]["message"]


def test_oversized_message_closes_the_connection(make_app: Callable[..., Flask],
                                                 serve: Serve) -> None:
    url = serve(make_app(GATEWAY_MAX_BODY_BYTES=1024))
    session = exchange(url + WS_ROUTES["generate"], request_for("generate", "x" * 2000), BEARER)
    assert session.messages == [] and session.close_code == 1009


def test_plain_http_request_is_a_json_400(url: str) -> None:
    response = requests.get("http" + url.removeprefix("ws") + WS_ROUTES["generate"],
                            headers=BEARER, timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["type"] == "bad_request"


UPGRADE = {**BEARER, "Upgrade": "websocket", "Connection": "Upgrade"}


@pytest.mark.parametrize(("headers", "says"), [
    (UPGRADE, "Sec-WebSocket-Key"),
    ({**UPGRADE, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "8"},
     "version 13"),
], ids=["no-key", "old-version"])
def test_a_broken_handshake_is_a_json_400(url: str, headers: dict[str, str], says: str) -> None:
    response = requests.get("http" + url.removeprefix("ws") + WS_ROUTES["chat"],
                            headers=headers, timeout=5)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert says in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", WS_ROUTES["chat"], 405), ("PUT", WS_ROUTES["generate"], 405),
    ("POST", "/v1/generate", 400), ("GET", "/healthz", 400), ("POST", "/api/tags", 405),
], ids=["post-ws-route", "put-ws-route", "upgrade-generate", "upgrade-healthz",
        "upgrade-tags"])
def test_a_websocket_route_asked_wrongly_or_an_upgrade_elsewhere_is_json(
        url: str, method: str, path: str, status: int) -> None:
    # werkzeug refuses these while restx looks for the route's owner: a bare 500 before.
    headers = UPGRADE if path.startswith(("/v1/generate", "/healthz", "/api")) else BEARER
    response = requests.request(method, "http" + url.removeprefix("ws") + path, json={},
                                headers=headers, timeout=5)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error if path.startswith("/api") else error["message"]  # Ollama's shape: a string


def test_rate_limit_refuses_the_handshake_as_json(make_app: Callable[..., Flask],
                                                  serve: Serve) -> None:
    url = serve(make_app(GATEWAY_RATE_LIMIT="1/minute"))
    assert exchange(url + WS_ROUTES["generate"], request_for("generate"),
                    BEARER).last["type"] == "done"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(url + WS_ROUTES["generate"], BEARER)
    assert refused.value.status_code == 429
    assert json.loads(refused.value.resp_body)["error"]["type"] == "rate_limited"


def test_routes_follow_the_mount_prefix(fake_ollama: FakeOllama, serve: Serve,
                                        tmp_path: Path) -> None:
    host = Flask("host")
    InferenceGateway(host, url_prefix="/ai", config={
        "GATEWAY_OLLAMA_URL": fake_ollama.url, "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
        "GATEWAY_API_KEYS_FILE": str(tmp_path / "keys.json"), "GATEWAY_POLL_SECONDS": 0})
    url = serve(host)
    session = exchange(url + "/ai" + WS_ROUTES["chat"],
                       request_for("chat", max_tokens=2, api_key=TEST_KEY))
    assert session.text == " tok0 tok1" and session.last["type"] == "done"
    with pytest.raises(websocket.WebSocketBadStatusException) as missing:
        connect(url + WS_ROUTES["chat"], BEARER)
    assert missing.value.status_code == 404


def test_each_session_is_one_access_line(url: str, caplog: pytest.LogCaptureFixture) -> None:
    route = WS_ROUTES["generate"]
    with caplog.at_level(logging.INFO, "flask_inference_gateway.access"):
        exchange(url + route, request_for("generate", max_tokens=3, api_key=TEST_KEY))
        exchange(url + route, request_for("generate", api_key="not-a-key"))
        ws = connect(url + route, BEARER)
        ws.send(json.dumps(request_for("generate", "[[sim:tokens=500]] [[sim:itl=0.02]]")))
        read_until_token(ws)
        ws.send(json.dumps({"type": "cancel"}))
        read_all(ws)
        hang_up(ws)

        def lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "flask_inference_gateway.access"]

        assert wait_until(lambda: len(lines()) == 3, 5), caplog.text
    done, refused, cancelled = sorted(lines(), key=lambda r: r.created)
    assert (done.route, done.status, done.key, done.upstream) == (route, 101, "tester", "ok")
    assert done.completion_tokens == 3
    assert (refused.status, refused.error) == (401, "unauthorized")
    assert (cancelled.status, cancelled.upstream) == (101, "cancelled")
    assert TEST_KEY not in caplog.text
