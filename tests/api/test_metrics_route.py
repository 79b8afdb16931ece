"""GET /metrics: the exposition, its buckets, and the optional token."""

from __future__ import annotations

import pytest

from flask_inference_gateway.observability.metrics import LATENCY_BUCKETS, TTFT_BUCKETS


def test_metrics_page(make_app) -> None:
    client = make_app().test_client()
    client.get("/healthz").close()  # closing the response finishes its record
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    for name in ("gateway_requests_total", "gateway_request_duration_seconds_bucket",
                 "gateway_in_flight_requests", "gateway_client_disconnects_total"):
        assert name in text


def test_documented_buckets(make_app) -> None:
    client = make_app().test_client()
    client.get("/healthz").close()  # closing the response finishes its record
    text = client.get("/metrics").get_data(as_text=True)
    assert 'le="0.025"' in text and 'le="300.0"' in text
    assert LATENCY_BUCKETS[0] == 0.025 and LATENCY_BUCKETS[-1] == 300.0
    assert TTFT_BUCKETS[0] == 0.01 and TTFT_BUCKETS[-1] == 60.0


@pytest.mark.parametrize(("header", "status"), [(None, 401), ("Bearer wrong", 401),
                                                ("Bearer scrape-me", 200)],
                         ids=["missing", "wrong", "right"])
def test_metrics_token(make_app, header: str | None, status: int) -> None:
    client = make_app(GATEWAY_METRICS_TOKEN="scrape-me").test_client()
    headers = {"Authorization": header} if header else {}
    assert client.get("/metrics", headers=headers).status_code == status
