"""Request-rate limits (Flask-Limiter), token budgets and stream caps through the routes."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import TEST_KEY

GENERATE = {"prompt": "one two three four", "model": "sim", "max_tokens": 4}


def test_limit_allows_exactly_its_amount(make_client) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="5/minute")
    responses = [client.post("/v1/generate", json=GENERATE) for _ in range(20)]
    assert Counter(r.status_code for r in responses) == {200: 5, 429: 15}
    ok, refused = responses[0], responses[-1]
    assert ok.headers["X-RateLimit-Limit"] == "5"
    assert ok.headers["X-RateLimit-Remaining"] == "4"
    assert "Retry-After" not in ok.headers
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.get_json()["error"]["type"] == "rate_limited"
    assert "5 per 1 minute" in refused.get_json()["error"]["message"]


def test_limits_are_per_key(make_client) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="1/minute",
                         GATEWAY_API_KEYS=f"tester:{TEST_KEY},other:other-key")
    assert client.post("/v1/generate", json=GENERATE).status_code == 200
    assert client.post("/v1/generate", json=GENERATE).status_code == 429
    other = client.post("/v1/generate", json=GENERATE, headers={"X-API-Key": "other-key",
                                                                "Authorization": ""})
    assert other.status_code == 200


def test_health_is_never_limited(make_client) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="1/minute")
    assert {client.get("/healthz").status_code for _ in range(5)} == {200}


def test_backend_retry_after_is_kept(make_client) -> None:
    response = make_client().post("/v1/generate", json={"prompt": "[[sim:status=503]]"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"


def test_disabled_limits(make_client) -> None:
    client = make_client(GATEWAY_RATE_LIMIT="1/minute", GATEWAY_RATE_LIMIT_DISABLED=True,
                         GATEWAY_TOKENS_PER_MINUTE=1)
    assert {client.post("/v1/generate", json=GENERATE).status_code for _ in range(3)} == {200}
    assert "X-RateLimit-Limit" not in client.post("/v1/generate", json=GENERATE).headers


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream"])
def test_token_budget_stops_requests_before_the_backend(make_client, fake_ollama,
                                                         route: str) -> None:
    # Each request reserves 4 prompt tokens (estimated) + 4 max_tokens = 8, and uses 8:
    # three fit in 24, a fourth finds nothing left.
    client = make_client(GATEWAY_TOKENS_PER_MINUTE=24)
    statuses = []
    for _ in range(4):
        response = client.post(route, json=GENERATE)
        response.get_data()
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert fake_ollama.stats["requests"] == 3


def test_abandoned_stream_is_charged(make_client, fake_ollama) -> None:
    # The prompt's estimate is 90 tokens: the stream reserves all 96 (its max_tokens is
    # clamped to 6), and keeps 90 + the pieces relayed, so 8 more no longer fit.
    client = make_client(GATEWAY_TOKENS_PER_MINUTE=96)
    response = client.post("/v1/generate/stream", buffered=False, json={
        **GENERATE, "max_tokens": 500, "prompt": "[[sim:tokens=500]] [[sim:itl=0.01]] " * 10})
    next(response.response)
    response.close()
    refused = client.post("/v1/generate", json=GENERATE)
    assert refused.status_code == 429


def test_stream_cap(make_client) -> None:
    client = make_client(GATEWAY_MAX_STREAMS=1)
    body = {**GENERATE, "prompt": "[[sim:tokens=200]] [[sim:itl=0.01]]", "max_tokens": 200}
    first = client.post("/v1/generate/stream", json=body, buffered=False)
    next(first.response)
    second = client.post("/v1/generate/stream", json=body)
    assert second.status_code == 429
    assert "streams open" in second.get_json()["error"]["message"]
    first.close()
    third = client.post("/v1/generate/stream", json={**GENERATE})
    assert third.status_code == 200
    third.get_data()
