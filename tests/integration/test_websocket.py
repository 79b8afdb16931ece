"""WebSocket streams through real gunicorn + gevent and websocket-client, to a fake Ollama."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.conftest import TEST_KEY, GatewayProcess
from tests.fake_ollama import FakeOllama
from tests.integration.test_gunicorn import assert_no_traceback, run_gateway, wait_until
from tests.integration.test_observability import access_lines
from tests.ws import (
    WS_ROUTES,
    connect,
    exchange,
    hang_up,
    read_all,
    read_until_token,
    request_for,
    ws_url,
)

BEARER = {"Authorization": f"Bearer {TEST_KEY}"}
KINDS = list(WS_ROUTES)
LONG = "[[sim:itl=0.05]] [[sim:tokens=400]] go"
DISCONNECTS = 10
CONCURRENT = 100


@pytest.fixture(scope="module")
def gateway(module_fake: FakeOllama,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run one gunicorn worker with API keys on, in front of the module's fake."""
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    yield from run_gateway(tmp_path_factory, GATEWAY_OLLAMA_URL=module_fake.url,
                           GATEWAY_READ_TIMEOUT="10", GATEWAY_AUTH_DISABLED="0",
                           GATEWAY_API_KEYS=f"tester:{TEST_KEY}",
                           GATEWAY_API_KEYS_FILE=str(keys))


@pytest.fixture
def url(gateway: GatewayProcess) -> str:
    """Return the gateway's ws:// base URL."""
    return ws_url(gateway.url)


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_stream_relays_each_piece_as_generated(url: str, fake: FakeOllama, kind: str) -> None:
    """Pieces arrive one by one while the model generates, then done with usage, then close."""
    session = exchange(url + WS_ROUTES[kind],
                       request_for(kind, "[[sim:itl=0.2]] [[sim:tokens=5]] hi"), BEARER)
    tokens = session.messages[:-1]
    assert [m["text"] for m in tokens] == [f" tok{i}" for i in range(5)], session.messages
    done = session.last
    assert done["type"] == "done" and done["done_reason"] == "stop", done
    assert done["usage"]["completion_tokens"] == 5
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + 5
    # The first piece arrives while the other four are still being generated.
    assert session.times[0] < 0.6 and session.times[-1] - session.times[0] > 0.6, session.times
    assert session.close_code == 1000
    assert fake.stats["completed"] == 1


@pytest.mark.parametrize(("headers", "extra"), [
    (BEARER, {}),
    ({"X-API-Key": TEST_KEY}, {}),
    ({}, {"api_key": TEST_KEY}),
], ids=["bearer-header", "x-api-key-header", "first-message"])
def test_key_in_a_header_or_the_first_message(url: str, fake: FakeOllama,
                                              headers: dict[str, str],
                                              extra: dict[str, Any]) -> None:
    """A key in the handshake's headers or in the request message is accepted."""
    session = exchange(url + WS_ROUTES["chat"], request_for("chat", max_tokens=3, **extra),
                       headers)
    assert session.text == " tok0 tok1 tok2" and session.last["type"] == "done"


@pytest.mark.parametrize(("headers", "extra"), [
    ({}, {}),
    ({}, {"api_key": "gw-wrong"}),
    ({"Authorization": "Bearer gw-wrong"}, {}),
], ids=["missing", "wrong-in-message", "wrong-in-header"])
def test_bad_key_is_a_401_error_message(url: str, fake: FakeOllama, headers: dict[str, str],
                                        extra: dict[str, Any]) -> None:
    """A missing or unknown key gets a 401 error message, then the connection closes."""
    session = exchange(url + WS_ROUTES["generate"], request_for("generate", **extra), headers)
    [error] = session.messages
    assert error["type"] == "error", error
    assert (error["error"]["status"], error["error"]["type"]) == (401, "unauthorized")
    assert session.close_code == 1000
    assert fake.stats["requests"] == 0


@pytest.mark.parametrize(("request_", "status", "type_"), [
    (json.dumps({"prompt": ""}), 422, "validation_error"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), 422, "validation_error"),
    ("{oops", 400, "invalid_json"),
], ids=["empty-prompt", "bad-role", "invalid-json"])
def test_invalid_request_is_an_error_message(url: str, fake: FakeOllama, request_: str,
                                             status: int, type_: str) -> None:
    """Validation is the REST body's: the same statuses and types, as an error message."""
    route = WS_ROUTES["chat" if "messages" in request_ else "generate"]
    session = exchange(url + route, request_, BEARER)
    [error] = session.messages
    assert (error["error"]["status"], error["error"]["type"]) == (status, type_), error
    assert fake.stats["requests"] == 0


@pytest.mark.parametrize(("directive", "status", "type_", "pieces"), [
    ("[[sim:status=503]]", 503, "backend_busy", 0),
    ("[[sim:die-after=3]]", 502, "backend_stream_broken", 3),
], ids=["busy", "dropped-after-3"])
def test_backend_fault_is_an_error_message(url: str, fake: FakeOllama, directive: str,
                                           status: int, type_: str, pieces: int) -> None:
    """A backend failure before or during the stream ends it with an error message."""
    session = exchange(url + WS_ROUTES["generate"],
                       request_for("generate", f"{directive} hi"), BEARER)
    assert session.text == "".join(f" tok{i}" for i in range(pieces))
    error = session.last
    assert error["type"] == "error", session.messages
    assert (error["error"]["status"], error["error"]["type"]) == (status, type_)
    assert session.close_code == 1000


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_cancel_stops_the_upstream_at_once(gateway: GatewayProcess, url: str,
                                           fake: FakeOllama, kind: str) -> None:
    """A cancel message aborts the upstream generation and is answered by a cancelled done."""
    log_start = len(gateway.log())
    ws = connect(url + WS_ROUTES[kind], BEARER)
    try:
        ws.send(json.dumps(request_for(kind, LONG)))
        read_until_token(ws)
        cancelled_at = time.monotonic()
        ws.send(json.dumps({"type": "cancel"}))
        assert fake.wait_for("cancelled", 1, timeout=1), fake.stats
        upstream_s = time.monotonic() - cancelled_at
        session = read_all(ws, limit_s=5)
    finally:
        hang_up(ws)
    print(f"\ncancel -> upstream cancelled in {upstream_s * 1000:.1f} ms")
    done = session.last
    assert done["type"] == "done" and done["done_reason"] == "cancelled", done
    assert 1 <= done["usage"]["completion_tokens"] < 400
    assert session.close_code == 1000
    assert fake.stats["completed"] == 0
    assert_no_traceback(gateway, log_start)


def test_client_disconnect_stops_the_upstream(gateway: GatewayProcess, url: str,
                                              fake: FakeOllama) -> None:
    """Clients that leave mid-stream (closing or dropping the TCP connection) free the GPU."""
    log_start = len(gateway.log())
    sockets = [connect(url + WS_ROUTES["generate"], BEARER) for _ in range(DISCONNECTS)]
    try:
        for ws in sockets:
            ws.send(json.dumps(request_for("generate", LONG)))
        for ws in sockets:
            read_until_token(ws)
        assert fake.stats["active"] == DISCONNECTS, fake.stats
    finally:
        closed_at = time.monotonic()
        for number, ws in enumerate(sockets):
            if number % 2:
                ws.close(timeout=1)  # a closing handshake
            else:
                ws.shutdown()  # the TCP connection just ends
    assert fake.wait_for("cancelled", DISCONNECTS, timeout=3), fake.stats
    print(f"\n{DISCONNECTS} websocket clients left -> upstream cancelled in "
          f"{time.monotonic() - closed_at:.3f}s")
    assert wait_until(lambda: fake.stats["active"] == 0, 3), fake.stats
    assert fake.stats["completed"] == 0
    time.sleep(0.3)  # a log line, if any, follows the upstream abort within milliseconds
    assert "Error handling request" not in gateway.log()[log_start:]
    assert_no_traceback(gateway, log_start)
    # The worker still serves the next session.
    assert exchange(url + WS_ROUTES["generate"], request_for("generate"),
                    BEARER).last["type"] == "done"


def test_one_worker_serves_concurrent_sessions(gateway: GatewayProcess, url: str,
                                               fake: FakeOllama) -> None:
    """One gevent worker relays many simultaneous WebSocket streams to their end."""
    log_start = len(gateway.log())
    request = request_for("generate", "[[sim:tokens=20]] [[sim:itl=0.02]] go")
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        sessions = list(pool.map(lambda _: exchange(url + WS_ROUTES["generate"], request,
                                                    BEARER, limit_s=60), range(CONCURRENT)))
    print(f"\n{CONCURRENT} concurrent websocket streams x 20 pieces through 1 worker: "
          f"{time.monotonic() - started:.2f}s")
    expected = "".join(f" tok{i}" for i in range(20))
    broken = [s for s in sessions if s.text != expected or s.last["type"] != "done"]
    assert not broken, broken[:3]
    assert fake.stats["completed"] == CONCURRENT, fake.stats
    assert_no_traceback(gateway, log_start)


def test_session_is_one_access_line(gateway: GatewayProcess, url: str, fake: FakeOllama) -> None:
    """Each session is recorded once: status 101 (or the refusal's), its usage and outcome."""
    ids = {"ok": f"ws-ok-{time.time_ns()}", "refused": f"ws-401-{time.time_ns()}"}
    exchange(url + WS_ROUTES["chat"], request_for("chat", max_tokens=2),
             {**BEARER, "X-Request-ID": ids["ok"]})
    exchange(url + WS_ROUTES["chat"], request_for("chat"), {"X-Request-ID": ids["refused"]})

    def line(request_id: str) -> dict[str, Any] | None:
        found = [x for x in access_lines(gateway) if x.get("request_id") == request_id]
        return found[0] if found else None

    assert wait_until(lambda: all(line(i) for i in ids.values()), 5), gateway.log()[-2000:]
    ok, refused = line(ids["ok"]), line(ids["refused"])
    assert ok is not None and refused is not None
    assert (ok["route"], ok["status"], ok["key"], ok["upstream"]) == (
        WS_ROUTES["chat"], 101, "tester", "ok")
    assert ok["completion_tokens"] == 2 and ok["stream"] is True
    assert (refused["status"], refused["error"]) == (401, "unauthorized")


def test_plain_http_request_is_a_json_400(gateway: GatewayProcess) -> None:
    """A GET without the WebSocket upgrade is refused in the gateway's JSON shape."""
    response = requests.get(gateway.url + WS_ROUTES["generate"], headers=BEARER, timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["type"] == "bad_request"

