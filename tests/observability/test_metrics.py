"""The metrics module: series looked up once, key labels bounded."""

from __future__ import annotations

from flask_inference_gateway.observability import metrics


def test_child_is_the_labelled_series_and_is_kept() -> None:
    series = metrics.child(metrics.REQUESTS, "/test/child", "POST", "200", "m")
    assert series is metrics.REQUESTS.labels("/test/child", "POST", "200", "m")
    assert metrics.child(metrics.REQUESTS, "/test/child", "POST", "200", "m") is series
    before = series._value.get()
    metrics.child(metrics.REQUESTS, "/test/child", "POST", "200", "m").inc()
    assert series._value.get() == before + 1
    page, _ = metrics.exposition()
    assert b'route="/test/child"' in page


def test_other_labels_are_other_series() -> None:
    one = metrics.child(metrics.DURATION, "/test/a")
    assert metrics.child(metrics.DURATION, "/test/b") is not one
