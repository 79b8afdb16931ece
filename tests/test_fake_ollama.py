"""Self-test of the fake Ollama server used by the integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fake_ollama import BUSY_MSG, MODEL_ERROR_MSG, FakeOllama

TIMEOUT = 5


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """Run a fresh fake server for one test."""
    with FakeOllama(tokens=8) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """Provide a pooled HTTP session that is closed afterwards."""
    with requests.Session() as s:
        yield s


def stream_lines(session: requests.Session, url: str, body: dict[str, Any]) -> list[dict]:
    """POST body with streaming on and return every NDJSON line."""
    with session.post(url, json=body, stream=True, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        return [json.loads(line) for line in resp.iter_lines() if line]


def test_root_version_tags_ps(fake: FakeOllama, session: requests.Session) -> None:
    """Answer the read-only endpoints in Ollama's shapes."""
    fake.loaded = [{"name": "sim:latest", "model": "sim:latest", "size": 1, "size_vram": 1,
                    "expires_at": "2030-01-01T00:00:00Z"}]
    assert session.get(fake.url, timeout=TIMEOUT).text == "Ollama is running"
    assert session.get(f"{fake.url}/api/version", timeout=TIMEOUT).json() == {"version": "0.12.0"}
    tags = session.get(f"{fake.url}/api/tags", timeout=TIMEOUT).json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest", "sim:latest"]
    assert set(tags[0]["details"]) >= {"family", "parameter_size", "quantization_level", "format"}
    assert session.get(f"{fake.url}/api/ps", timeout=TIMEOUT).json()["models"] == fake.loaded


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        ("/api/generate", {"model": "sim", "prompt": "a b c"}, lambda r: r["response"]),
        (
            "/api/chat",
            {"model": "sim:latest", "messages": [{"role": "user", "content": "a b c"}]},
            lambda r: r["message"]["content"],
        ),
    ],
    ids=["generate", "chat"],
)
def test_non_stream(fake: FakeOllama, session: requests.Session, path, body, text_of) -> None:
    """Return one JSON object with the whole text and the final stats fields."""
    resp = session.post(f"{fake.url}{path}", json={**body, "stream": False}, timeout=TIMEOUT)
    data = resp.json()
    assert resp.status_code == 200 and "Content-Length" in resp.headers
    assert text_of(data) == "".join(f" tok{i}" for i in range(8))
    assert data["done"] is True and data["done_reason"] == "stop"
    assert data["eval_count"] == 8 and data["prompt_eval_count"] == 3
    assert {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"} <= set(data)
    assert fake.stats == {"requests": 1, "completed": 1, "cancelled": 0, "active": 0, "errors": 0,
                          "peak": 1}
    assert fake.requests_seen[0]["path"] == path


def test_stream_generate(fake: FakeOllama, session: requests.Session) -> None:
    """Stream one line per piece, then a final line, honouring num_predict."""
    body = {"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 3}}
    lines = stream_lines(session, f"{fake.url}/api/generate", body)
    assert [line["response"] for line in lines] == [" tok0", " tok1", " tok2", ""]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["context"] == [1, 2, 3]
    assert fake.wait_for("completed", 1)


def test_stream_chat_keeps_alive(fake: FakeOllama, session: requests.Session) -> None:
    """Serve consecutive streamed chats over the pooled connection."""
    body = {"model": "sim", "messages": [{"role": "user", "content": "x"}]}
    for _ in range(3):
        lines = stream_lines(session, f"{fake.url}/api/chat", body)
        assert lines[-1]["message"] == {"role": "assistant", "content": ""}
        assert len(lines) == 9
    assert fake.wait_for("completed", 3)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": "nope", "prompt": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ({"prompt": "x"}, 400, "model is required"),
        ({"model": "sim", "prompt": "[[sim:status=503]]"}, 503, BUSY_MSG),
    ],
    ids=["unknown-model", "missing-model", "status-503"],
)
def test_errors(fake: FakeOllama, session: requests.Session, body, status, error) -> None:
    """Answer failures with an Ollama JSON error body."""
    resp = session.post(f"{fake.url}/api/generate", json=body, timeout=TIMEOUT)
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"error": error}


def test_invalid_json(fake: FakeOllama, session: requests.Session) -> None:
    """Reject a malformed body with Go's wording."""
    resp = session.post(f"{fake.url}/api/chat", data=b"nonsense", timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("invalid character")


def test_error_after(fake: FakeOllama, session: requests.Session) -> None:
    """Stream N pieces, then an error line, then end the body cleanly."""
    body = {"model": "sim", "prompt": "go [[sim:error-after=2]]"}
    lines = stream_lines(session, f"{fake.url}/api/generate", body)
    assert [line.get("response") for line in lines[:2]] == [" tok0", " tok1"]
    assert lines[2:] == [{"error": MODEL_ERROR_MSG}]
    assert fake.wait_for("errors", 1)


def test_die_after(fake: FakeOllama, session: requests.Session) -> None:
    """Drop the connection mid-stream so the client sees a broken body."""
    body = {"model": "sim", "prompt": "go [[sim:die-after=2]]"}
    seen = []
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        with session.post(f"{fake.url}/api/generate", json=body, stream=True,
                          timeout=TIMEOUT) as resp:
            seen.extend(resp.iter_lines())
    assert len(seen) == 2
    assert fake.wait_for("errors", 1)


@pytest.mark.parametrize("directive", ["", "[[sim:hang]]"], ids=["streaming", "hang"])
def test_client_leaving_counts_cancelled(fake: FakeOllama, directive: str) -> None:
    """Count a cancellation promptly when the client closes a stream mid-way."""
    prompt = f"go [[sim:tokens=100]] [[sim:itl=0.05]] {directive}"
    with requests.Session() as session:
        resp = session.post(f"{fake.url}/api/generate", json={"model": "sim", "prompt": prompt},
                            stream=True, timeout=TIMEOUT)
        assert resp.status_code == 200
        if not directive:
            assert json.loads(next(resp.iter_lines()))["response"] == " tok0"
        resp.close()
    start = time.monotonic()
    assert fake.wait_for("cancelled", 1, timeout=2)
    assert time.monotonic() - start < 1
    assert fake.stats["active"] == 0 and fake.stats["completed"] == 0


def test_delay_then_client_timeout(fake: FakeOllama) -> None:
    """Hold the status line for delay seconds; a client timing out counts as cancelled."""
    body = {"model": "sim", "prompt": "[[sim:delay=3]]", "stream": False}
    with requests.Session() as session, pytest.raises(requests.exceptions.ReadTimeout):
        session.post(f"{fake.url}/api/generate", json=body, timeout=0.2)
    assert fake.wait_for("cancelled", 1, timeout=2)


def test_stats_endpoints_and_reset(fake: FakeOllama, session: requests.Session) -> None:
    """Expose and reset the counters over HTTP."""
    session.post(f"{fake.url}/api/generate", json={"model": "sim", "stream": False},
                 timeout=TIMEOUT).close()
    assert session.get(f"{fake.url}/_fake/stats", timeout=TIMEOUT).json()["completed"] == 1
    session.post(f"{fake.url}/_fake/reset", timeout=TIMEOUT).close()
    assert fake.stats["requests"] == 0 and fake.requests_seen == []
