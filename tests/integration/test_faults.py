"""Every backend fault and every bad input answers in the gateway's JSON shape, via gunicorn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import GatewayProcess, free_port
from tests.fake_ollama import FakeOllama
from tests.integration.test_gunicorn import (
    JSON_TYPE,
    SSE_TYPE,
    STREAM_ROUTES,
    Reply,
    assert_no_traceback,
    body_for,
    call,
    error_of,
    run_gateway,
)

ALL_ROUTES = ["/v1/generate", "/v1/generate/stream", "/v1/chat", "/v1/chat/stream"]
ROUTE_IDS = ["generate", "generate-stream", "chat", "chat-stream"]
MAX_BODY_BYTES = 1000

# id: (prompt, body extras, expected status, expected error type)
HTTP_FAULTS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "busy-503": ("[[sim:status=503]]", {}, 503, "backend_busy"),
    "rejected-400": ("[[sim:status=400]]", {}, 400, "backend_rejected"),
    "failed-500": ("[[sim:status=500]]", {}, 502, "backend_failed"),  # it gave its reason
    "unknown-model": ("hi", {"model": "no-such-model"}, 404, "model_not_found"),
    "delay-past-timeout": ("[[sim:delay=3]]", {}, 504, "backend_timeout"),
}
# Faults of a non-streamed answer that only show once the body is read.
BODY_FAULTS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "hang": ("[[sim:hang]]", {}, 504, "backend_timeout"),
    "error-after-3": ("[[sim:error-after=3]]", {}, 502, "backend_error"),
}
# id: (prompt, text pieces before the error, error event type).
STREAM_FAULTS = {
    "die-after-3": ("[[sim:die-after=3]]", 3, "backend_stream_broken"),
    "error-after-3": ("[[sim:error-after=3]] [[sim:itl=0.02]]", 3, "backend_error"),
    "silent-after-1": ("[[sim:tokens=3]] [[sim:itl=5]]", 1, "backend_timeout"),
}
# id: (method, path, request kwargs, expected status, expected error type)
BAD_INPUTS: dict[str, tuple[str, str, dict[str, Any], int, str]] = {
    "malformed-json": ("POST", "/v1/generate", {"data": b'{"prompt": ',
                       "headers": {"Content-Type": JSON_TYPE}}, 400, "invalid_json"),
    "text-plain": ("POST", "/v1/generate", {"data": b'{"prompt": "hi"}',
                   "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    "too-large": ("POST", "/v1/generate", {"json": {"prompt": "x" * 2 * MAX_BODY_BYTES}},
                  413, "payload_too_large"),
    "too-large-chunked": ("POST", "/v1/generate/stream", {
        "chunks": [b'{"prompt": "', b"x" * 2 * MAX_BODY_BYTES, b'"}'],
        "headers": {"Content-Type": JSON_TYPE}}, 413, "payload_too_large"),
    "invalid-field": ("POST", "/v1/chat", {"json": {"messages": []}}, 422, "validation_error"),
    "unknown-route": ("GET", "/v1/nope", {}, 404, "not_found"),
    "get-on-post-route": ("GET", "/v1/generate", {}, 405, "method_not_allowed"),
}


# This module checks how each single fault is answered: a circuit breaker that
# opened after a few of them would answer the rest for it (test_scaleout.py
# tests the breaker).
NO_BREAKER = {"GATEWAY_BREAKER_FAILURES": "1000000"}


@pytest.fixture(scope="module")
def gateway(module_fake: FakeOllama,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run a gateway with 1 s token timeouts, a 2 s deadline, 0.3 s heartbeats, 1000-byte bodies."""
    yield from run_gateway(tmp_path_factory, GATEWAY_OLLAMA_URL=module_fake.url,
                           GATEWAY_READ_TIMEOUT="1", GATEWAY_FIRST_TOKEN_TIMEOUT="1",
                           GATEWAY_TOTAL_TIMEOUT="2",
                           GATEWAY_HEARTBEAT_SECONDS="0.3",
                           GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES), **NO_BREAKER)


@pytest.fixture(scope="module")
def down_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run a gateway whose backend URL is a loopback port where nothing listens."""
    yield from run_gateway(tmp_path_factory,
                           GATEWAY_OLLAMA_URL=f"http://127.0.0.1:{free_port()}", **NO_BREAKER)


@pytest.fixture(scope="module")
def slow_heartbeat_gateway(module_fake: FakeOllama,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run a gateway with a 1 s read timeout and a heartbeat that does not divide it."""
    yield from run_gateway(tmp_path_factory, GATEWAY_OLLAMA_URL=module_fake.url,
                           GATEWAY_READ_TIMEOUT="1", GATEWAY_FIRST_TOKEN_TIMEOUT="1",
                           GATEWAY_HEARTBEAT_SECONDS="0.75", **NO_BREAKER)


@pytest.fixture
def clean_log(gateway: GatewayProcess) -> Iterator[None]:
    """Fail the test if gunicorn logged a traceback while it ran."""
    start = len(gateway.log())
    yield
    assert_no_traceback(gateway, start)


def assert_error(reply: Reply, status: int, error_type: str) -> dict[str, Any]:
    """Check a JSON error answer's status and type; return its error object."""
    assert reply.status == status, reply.text
    error = error_of(reply)
    assert error["type"] == error_type, error
    return error


def assert_error_event(reply: Reply, error_type: str) -> None:
    """Check that a 200 stream ends with exactly one error event of ``error_type``."""
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith(SSE_TYPE)
    last = reply.data[-1]
    assert last.name == "error", reply.data
    assert set(last.data) == {"error"}, last.data
    assert last.data["error"]["type"] == error_type, last.data
    assert isinstance(last.data["error"]["message"], str)
    assert [e.name for e in reply.data].count("error") == 1
    assert not any(e.data.get("done") for e in reply.data)


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("path", ALL_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("fault", list(HTTP_FAULTS), ids=list(HTTP_FAULTS))
def test_fault_before_stream(gateway: GatewayProcess, fake: FakeOllama, path: str,
                             fault: str) -> None:
    """A fault before the first piece is an HTTP error status with a JSON body."""
    prompt, extra, status, error_type = HTTP_FAULTS[fault]
    reply = call(gateway.url, path, body_for(path, prompt, **extra), limit_s=10)
    assert_error(reply, status, error_type)
    if status == 503:
        assert reply.headers["Retry-After"].isdigit(), reply.headers
    if error_type == "backend_timeout":
        assert reply.elapsed < 2.5, reply.elapsed
    assert fake.stats["completed"] == 0


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat"], ids=["generate", "chat"])
@pytest.mark.parametrize("fault", list(BODY_FAULTS), ids=list(BODY_FAULTS))
def test_fault_in_whole_answer(gateway: GatewayProcess, fake: FakeOllama, path: str,
                               fault: str) -> None:
    """A non-streamed answer that fails upstream is a JSON error too."""
    prompt, extra, status, error_type = BODY_FAULTS[fault]
    reply = call(gateway.url, path, body_for(path, prompt, **extra), limit_s=10)
    assert_error(reply, status, error_type)
    assert reply.elapsed < 2.5, reply.elapsed


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("path", STREAM_ROUTES, ids=["generate", "chat"])
@pytest.mark.parametrize("fault", list(STREAM_FAULTS), ids=list(STREAM_FAULTS))
def test_fault_mid_stream(gateway: GatewayProcess, fake: FakeOllama, path: str,
                          fault: str) -> None:
    """A fault after the stream started is the pieces so far, then one error event."""
    prompt, pieces, error_type = STREAM_FAULTS[fault]
    reply = call(gateway.url, path, body_for(path, prompt), limit_s=10)
    assert reply.texts == [f" tok{i}" for i in range(pieces)]
    assert_error_event(reply, error_type)
    assert reply.elapsed < 2.5, reply.elapsed


@pytest.mark.usefixtures("clean_log")
def test_heartbeat_during_backend_silence(gateway: GatewayProcess, fake: FakeOllama) -> None:
    """A backend silent mid-stream: ': ping' comments every 0.3 s until the read timeout."""
    reply = call(gateway.url, "/v1/generate/stream",
                 body_for("/v1/generate", "[[sim:tokens=3]] [[sim:itl=5]]"), limit_s=10)
    assert_error_event(reply, "backend_timeout")
    pings = reply.pings
    assert 2 <= len(pings) <= 6, reply.events
    assert all(p.data == ": ping" for p in pings)
    assert all(p.at < reply.data[-1].at for p in pings)
    assert pings[0].at > 0.2, pings
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats  # the gateway let go


def test_read_timeout_is_not_stretched_by_heartbeats(slow_heartbeat_gateway: GatewayProcess,
                                                     fake: FakeOllama) -> None:
    """Mid-stream, GATEWAY_READ_TIMEOUT=1 ends a silent stream after ~1 s, not 2 heartbeats."""
    reply = call(slow_heartbeat_gateway.url, "/v1/generate/stream",
                 body_for("/v1/generate", "[[sim:tokens=3]] [[sim:itl=5]]"), limit_s=10)
    assert_error_event(reply, "backend_timeout")
    assert len(reply.pings) == 1, reply.pings  # at 0.75 s
    assert 0.95 < reply.data[-1].at < 1.3, f"timed out after {reply.data[-1].at:.2f}s, not ~1s"


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input(gateway: GatewayProcess, fake: FakeOllama, case: str) -> None:
    """Bad requests get their 4xx in the JSON error shape and never reach the backend."""
    method, path, kwargs, status, error_type = BAD_INPUTS[case]
    if "chunks" in kwargs:  # an iterator body: requests sends it chunked, without a length
        kwargs = {**kwargs, "data": iter(kwargs["chunks"])}
        del kwargs["chunks"]
    reply = call(gateway.url, path, method=method, limit_s=10, **kwargs)
    error = assert_error(reply, status, error_type)
    if status == 405:
        assert "POST" in reply.headers["Allow"], reply.headers
    if status == 422:
        assert "messages" in error["fields"], error
    assert fake.stats["requests"] == 0 and fake.requests_seen == []


@pytest.mark.usefixtures("clean_log")
@pytest.mark.parametrize("path", STREAM_ROUTES, ids=["generate", "chat"])
def test_no_first_token_is_a_504_before_the_stream(gateway: GatewayProcess, fake: FakeOllama,
                                                   path: str) -> None:
    """A backend that never sends a token: 504 JSON after the first-token timeout, no stream."""
    reply = call(gateway.url, path, body_for(path, "[[sim:hang]]"), limit_s=10)
    assert_error(reply, 504, "backend_timeout")
    assert 0.9 < reply.elapsed < 2.0, reply.elapsed
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats  # the gateway let go


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/generate/stream", "/v1/chat/stream"],
                         ids=["generate", "generate-stream", "chat-stream"])
def test_backend_down(down_gateway: GatewayProcess, path: str) -> None:
    """A refused backend connection is 502 backend_unavailable."""
    reply = call(down_gateway.url, path, body_for(path), limit_s=10)
    assert_error(reply, 502, "backend_unavailable")


def test_backend_down_probes(down_gateway: GatewayProcess) -> None:
    """With the backend down, /readyz is 503 with the reason, /healthz stays 200."""
    ready = call(down_gateway.url, "/readyz", method="GET", limit_s=10)
    assert ready.status == 503
    assert ready.headers["Content-Type"].startswith(JSON_TYPE)
    body = json.loads(ready.text)
    assert body["status"] == "not_ready" and body["backends"][0]["ok"] is False, body
    assert call(down_gateway.url, "/healthz", method="GET").status == 200
    assert_error(call(down_gateway.url, "/v1/models", method="GET"), 502, "backend_unavailable")
    assert_no_traceback(down_gateway, 0)
