"""Each request: one set of metric updates and one access log line, with a request id."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from tests.conftest import TEST_KEY
from tests.fake_ollama import FakeOllama


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def send(client, path: str, **kwargs):
    """POST and read the whole answer; closing it is what finishes the request's record."""
    response = client.post(path, **kwargs)
    response.get_data()
    response.close()
    return response


def test_requests_are_counted_by_route_status_and_model(client) -> None:
    labels = {"route": "/v1/generate", "method": "POST", "status": "200", "model": "sim"}
    before = sample("gateway_requests_total", **labels)
    # Other tests leave test-client responses unclosed (their records never end):
    # compare with the gauge's value before, not with zero.
    in_flight = sample("gateway_in_flight_requests")
    for _ in range(3):
        send(client, "/v1/generate", json={"prompt": "a b", "model": "sim"})
    assert sample("gateway_requests_total", **labels) == before + 3
    assert sample("gateway_in_flight_requests") == in_flight


def test_tokens_and_time_to_first_token_of_a_stream(client) -> None:
    key = {"model": "sim", "key": "tester"}
    prompt, completion = (sample("gateway_prompt_tokens_total", **key),
                          sample("gateway_completion_tokens_total", **key))
    ttft = sample("gateway_time_to_first_token_seconds_count", model="sim")
    streams = sample("gateway_in_flight_streams")
    response = client.post("/v1/generate/stream", json={"prompt": "a b c", "model": "sim"})
    response.get_data()
    response.close()
    assert sample("gateway_prompt_tokens_total", **key) == prompt + 3
    assert sample("gateway_completion_tokens_total", **key) == completion + 8
    assert sample("gateway_time_to_first_token_seconds_count", model="sim") == ttft + 1
    assert sample("gateway_in_flight_streams") == streams


def test_a_client_that_leaves_is_counted_once(client, fake_ollama: FakeOllama) -> None:
    left = sample("gateway_client_disconnects_total")
    cancelled = sample("gateway_upstream_requests_total", backend=fake_ollama.url,
                       outcome="cancelled")
    response = client.post("/v1/generate/stream", buffered=False, json={
        "prompt": "[[sim:tokens=300]] [[sim:itl=0.01]]", "model": "sim", "max_tokens": 300})
    next(response.response)
    response.close()
    assert sample("gateway_client_disconnects_total") == left + 1
    assert sample("gateway_upstream_requests_total", backend=fake_ollama.url,
                  outcome="cancelled") == cancelled + 1


@pytest.mark.parametrize(("headers", "metric", "labels"), [
    ({"Authorization": "Bearer nope"}, "gateway_auth_rejected_total", {"reason": "unauthorized"}),
    ({}, "gateway_rate_limited_total", {"limit": "requests"}),
], ids=["auth", "rate"])
def test_refusals_are_counted(make_client, headers, metric: str, labels: dict) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="1/minute")
    before = sample(metric, **labels)
    send(client, "/v1/generate", json={"prompt": "x"}, headers=headers)
    send(client, "/v1/generate", json={"prompt": "x"}, headers=headers)
    assert sample(metric, **labels) >= before + 1


@pytest.mark.parametrize(("sent", "kept"), [("abc-123_x.y:z", True), ("bad id!", False),
                                            ("x" * 200, False)],
                         ids=["well-formed", "spaces", "too-long"])
@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream", "/v1/nope"])
def test_request_id_round_trip(client, fake_ollama: FakeOllama, sent: str, kept: bool,
                               route: str) -> None:
    response = send(client, route, json={"prompt": "x"}, headers={"X-Request-ID": sent})
    returned = response.headers["X-Request-ID"]
    assert (returned == sent) is kept
    assert len(returned) >= 8
    if route != "/v1/nope":
        assert fake_ollama.requests_seen[-1]["request_id"] == returned


def test_errors_carry_a_request_id(client) -> None:
    response = send(client, "/v1/generate", json={"prompt": ""})
    assert response.status_code == 422 and response.headers["X-Request-ID"]


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flask_inference_gateway.access"]


def test_one_access_line_per_request_without_the_prompt(client, caplog) -> None:
    with caplog.at_level(logging.INFO, "flask_inference_gateway.access"):
        send(client, "/v1/generate", json={"prompt": "secret words", "model": "sim"},
                    headers={"X-Request-ID": "req-1"})
        send(client, "/v1/chat/stream", json={
            "model": "sim", "messages": [{"role": "user", "content": "hidden text"}]})
    first, second = access_lines(caplog)
    assert (first.request_id, first.key, first.route, first.status, first.model) == (
        "req-1", "tester", "/v1/generate", 200, "sim")
    assert first.prompt_tokens == 2 and first.completion_tokens == 8
    assert first.duration_ms >= 0 and first.upstream == "ok"
    assert second.stream is True and second.ttft_ms >= 0 and second.completion_tokens == 8
    assert "secret" not in caplog.text and "hidden" not in caplog.text
    assert TEST_KEY not in caplog.text


def test_failures_say_why(client, caplog) -> None:
    with caplog.at_level(logging.INFO, "flask_inference_gateway.access"):
        send(client, "/v1/generate", json={"prompt": "[[sim:status=503]]"})
        send(client, "/v1/generate/stream", json={"prompt": "[[sim:die-after=2]]"})
    busy, broken = access_lines(caplog)
    assert (busy.status, busy.error, busy.upstream) == (503, "backend_busy", "backend_busy")
    assert (broken.status, broken.error, broken.pieces) == (200, "backend_stream_broken", 2)


def test_prompts_logged_only_when_asked(make_client, caplog) -> None:
    client = make_client(GATEWAY_LOG_PROMPTS=True)
    with caplog.at_level(logging.INFO, "flask_inference_gateway.access"):
        send(client, "/v1/generate", json={"prompt": "visible words", "model": "sim"})
        send(client, "/v1/generate/stream", json={"prompt": "streamed", "model": "sim"})
    whole, streamed = access_lines(caplog)
    assert whole.prompt == "visible words" and whole.output.startswith(" tok0")
    assert streamed.prompt == "streamed" and streamed.output.startswith(" tok0")


def test_json_log_format(make_client, capsys) -> None:
    from flask_inference_gateway.observability.jsonlog import JsonFormatter

    record = logging.LogRecord("flask_inference_gateway.access", logging.INFO, "", 0,
                               "POST %s", ("/v1/x",), None)
    record.request_id, record.status = "r1", 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /v1/x" and line["request_id"] == "r1"
    assert line["status"] == 200 and line["level"] == "info" and line["time"]
