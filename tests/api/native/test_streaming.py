"""POST /v1/generate/stream and /v1/chat/stream relay pieces as SSE."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from flask_inference_gateway.api.native.schemas import StreamEvent
from tests.fake_ollama import FakeOllama
from tests.sse import COMMENT, parse_sse


@pytest.mark.parametrize(("route", "body"), [
    ("/v1/generate/stream", {"prompt": "Hi", "max_tokens": 4}),
    ("/v1/chat/stream", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
], ids=["generate", "chat"])
def test_stream_relays_every_piece(client: FlaskClient, fake_ollama: FakeOllama, route: str,
                                   body: dict) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = parse_sse(response.get_data())
    assert [data["text"] for _, data in events[:-1]] == [" tok0", " tok1", " tok2", " tok3"]
    name, done = events[-1]
    assert name is None and done["done"] is True and done["done_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 4
    assert all(StreamEvent().validate(data) == {} for _, data in events)
    assert fake_ollama.requests_seen[0]["stream"] is True


@pytest.mark.parametrize(("directive", "type_", "pieces"), [
    ("[[sim:error-after=2]]", "backend_error", 2),
    ("[[sim:die-after=3]]", "backend_stream_broken", 3),
], ids=["error-line", "dropped-connection"])
def test_failure_after_the_first_byte_is_an_error_event(client: FlaskClient, directive: str,
                                                         type_: str, pieces: int) -> None:
    response = client.post("/v1/generate/stream", json={"prompt": f"Hi {directive}"})
    events = parse_sse(response.get_data())
    assert response.status_code == 200
    assert len([e for e in events if e[1] and "text" in e[1]]) == pieces
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == type_
    assert StreamEvent().validate(data) == {}


def test_silent_backend_gets_pings_then_a_timeout_event(make_client) -> None:
    client = make_client(GATEWAY_HEARTBEAT_SECONDS=0.2, GATEWAY_READ_TIMEOUT=0.9)
    response = client.post("/v1/generate/stream",
                           json={"prompt": "[[sim:tokens=3]] [[sim:itl=5]]"})
    events = parse_sse(response.get_data())
    assert events[0][1] == {"text": " tok0"}
    assert events.count(COMMENT) >= 3
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "backend_timeout"


def test_no_first_token_in_time_is_a_504_before_any_byte(make_client) -> None:
    client = make_client(GATEWAY_FIRST_TOKEN_TIMEOUT=0.5, GATEWAY_HEARTBEAT_SECONDS=0.1)
    response = client.post("/v1/generate/stream", json={"prompt": "[[sim:hang]]"})
    assert response.status_code == 504
    assert response.get_json()["error"]["type"] == "backend_timeout"
    assert "first-token" in response.get_json()["error"]["message"]


def test_closing_the_response_cancels_the_upstream(make_client, fake_ollama: FakeOllama) -> None:
    client = make_client()
    response = client.post("/v1/generate/stream",
                           json={"prompt": "[[sim:tokens=500]] [[sim:itl=0.02]]"},
                           buffered=False)
    first = next(response.response)
    assert first.startswith(b"data: ")
    response.close()
    assert fake_ollama.wait_for("cancelled", 1, timeout=3)
