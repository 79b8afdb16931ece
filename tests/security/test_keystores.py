"""The Redis key store: shared entries, reload on a version bump, outages (real redis-server)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from flask_inference_gateway.core.errors import LimitsUnavailable
from flask_inference_gateway.security import keys
from flask_inference_gateway.security.keys import KeyEntry, KeyStore, Principal, hash_key, new_key
from flask_inference_gateway.security.keystores import (
    KEYS_HASH,
    VERSION_KEY,
    KeyExists,
    RedisEntries,
    parse_entries,
    public_url,
)
from flask_inference_gateway.settings import ConfigError
from tests.conftest import free_port
from tests.integration.redis_server import AVAILABLE, RedisServer

needs_redis = pytest.mark.skipif(not AVAILABLE, reason="redis-server is not installed "
                                                       "(CI installs it)")
TIMEOUT = 0.25
# Only the keys use Redis in the app tests: rate limits and budgets, which would too, are off.
KEYS_ONLY = {"GATEWAY_RATE_LIMIT_DISABLED": True}


@pytest.fixture
def shared(module_redis: RedisServer) -> Iterator[RedisServer]:
    """Return the module's Redis, emptied for this test."""
    with module_redis.client() as client:
        client.flushdb()
    yield module_redis


def dead_url() -> str:
    """Return the URL of a Redis that is not there."""
    return f"redis://127.0.0.1:{free_port()}/0"


def within(check: Callable[[], bool], seconds: float) -> float | None:
    """Return how long ``check`` took to hold (polled every 20 ms), or None after ``seconds``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.02)
    return time.monotonic() - started


def test_create_list_revoke_round_trip(shared: RedisServer) -> None:
    store = RedisEntries(shared.url, TIMEOUT)
    first = KeyEntry(name="a", hash=hash_key("a-key"), models=["sim"], weight=2.5, priority=True,
                     created_at="2024-01-01T00:00:00+00:00")
    store.add(first)
    store.add(KeyEntry(name="b", hash=hash_key("b-key")))
    for clash in (KeyEntry(name="a", hash=hash_key("other")),
                  KeyEntry(name="c", hash=hash_key("a-key"))):
        with pytest.raises(KeyExists):
            store.add(clash)
    assert [e.name for e in store.entries()] == ["a", "b"]
    assert store.entries()[0] == first
    assert store.remove("a") and not store.remove("a")
    assert [e.name for e in store.entries()] == ["b"]
    with shared.client() as client:
        # Three changes; the counter started at the clock, not at 0 (see keystores.BUMP).
        assert int(client.get(VERSION_KEY)) > time.time() - 60


def test_entries_never_hold_the_raw_key(shared: RedisServer) -> None:
    raw = new_key()
    RedisEntries(shared.url, TIMEOUT).add(KeyEntry(name="secretive", hash=hash_key(raw)))
    with shared.client() as client:
        dump = [client.get(VERSION_KEY), *client.keys("*")]
        dump += [part for pair in client.hgetall(KEYS_HASH).items() for part in pair]
    assert b"secretive" in b"".join(dump)
    assert not any(raw.encode() in part for part in dump)


def test_a_version_bump_reaches_every_worker_within_a_second(shared: RedisServer) -> None:
    """Two stores stand for two workers; each checks the version at most once a second."""
    store = RedisEntries(shared.url, TIMEOUT)
    workers = [KeyStore("", RedisEntries(shared.url, TIMEOUT)) for _ in range(2)]
    assert all(worker.authenticate("k-1") is None for worker in workers)
    store.add(KeyEntry(name="k", hash=hash_key("k-1")))
    took = within(lambda: all(w.authenticate("k-1") == Principal("k") for w in workers), 1.5)
    assert took is not None and took <= 1.1, took
    store.remove("k")
    took = within(lambda: all(w.authenticate("k-1") is None for w in workers), 1.5)
    assert took is not None and took <= 1.1, took


def test_unparsable_entries_authenticate_nobody(caplog: pytest.LogCaptureFixture) -> None:
    good = KeyEntry(name="good", hash=hash_key("g"))
    table = {good.hash.encode(): json.dumps(good.to_dict()).encode(),
             b"sha256:1": b"{not json", b"sha256:2": b"[1, 2]",
             b"sha256:3": json.dumps(KeyEntry(name="moved", hash="sha256:4").to_dict()).encode()}
    assert parse_entries(table) == [good]
    assert "3 entries of gw:keys do not parse" in caplog.text


def test_messages_name_redis_without_its_password() -> None:
    assert public_url("redis://user:s3cret@cache:6380/2") == "redis://cache:6380/2"
    assert "s3cret" not in RedisEntries("redis://:s3cret@cache/0", TIMEOUT).where


@needs_redis
def test_redis_down_keeps_the_last_keys(monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(keys, "RELOAD_CHECK_SECONDS", 0.0)
    caplog.set_level(logging.WARNING, "flask_inference_gateway")
    with RedisServer() as server:
        RedisEntries(server.url, TIMEOUT).add(KeyEntry(name="kept", hash=hash_key("kept-key")))
        store = KeyStore("", RedisEntries(server.url, TIMEOUT), fail_open=False)
        server.stop()
        for _ in range(3):  # every call checks Redis again, and fails
            assert store.authenticate("kept-key") == Principal("kept")
            assert store.authenticate("unknown") is None  # known keys loaded: no 503
        assert caplog.text.count("Redis unreachable") == 1
        server.start()  # empty now: the key is gone with its data
        assert store.authenticate("kept-key") is None
        assert "Redis reachable again" in caplog.text


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_redis_never_reached(fail_open: bool) -> None:
    """Nothing loaded: fail closed refuses unknown keys with 503, fail open with 401;
    the environment's keys work either way."""
    store = KeyStore("env:env-key", RedisEntries(dead_url(), TIMEOUT), fail_open=fail_open)
    assert not store.empty  # Redis may hold keys: not 'no key configured'
    assert store.authenticate("env-key") == Principal("env")
    if fail_open:
        assert store.authenticate("some-key") is None
    else:
        with pytest.raises(LimitsUnavailable):
            store.authenticate("some-key")


def test_fail_closed_gateway_answers_503_not_500(make_app: Callable[..., Flask]) -> None:
    app = make_app(GATEWAY_KEYS_BACKEND="redis", GATEWAY_REDIS_URL=dead_url(),
                   GATEWAY_REDIS_FAIL_OPEN=False, GATEWAY_API_KEYS="", **KEYS_ONLY)
    answer = app.test_client().post("/v1/generate", json={"prompt": "hi"},
                                    headers={"Authorization": "Bearer gw-some-key"})
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers["Retry-After"] == "1"
    error = answer.get_json()["error"]
    assert error["type"] == "limits_unavailable" and "key store" in error["message"]


def test_redis_backend_without_a_url_stops_the_start(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_REDIS_URL"):
        make_app(GATEWAY_KEYS_BACKEND="redis", GATEWAY_REDIS_URL="")


def test_gateway_authenticates_from_redis(make_app: Callable[..., Flask],
                                          shared: RedisServer) -> None:
    raw = new_key()
    RedisEntries(shared.url, TIMEOUT).add(KeyEntry(name="remote", hash=hash_key(raw)))
    client = make_app(GATEWAY_KEYS_BACKEND="redis", GATEWAY_REDIS_URL=shared.url,
                      GATEWAY_API_KEYS="", **KEYS_ONLY).test_client()
    ok = client.post("/v1/generate", json={"prompt": "hi"},
                     headers={"Authorization": f"Bearer {raw}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    refused = client.post("/v1/generate", json={"prompt": "hi"},
                          headers={"Authorization": "Bearer gw-not-a-key"})
    assert refused.status_code == 401
