"""Token budgets (reserve, settle), stream caps, and what a store outage means.

Every budget test runs against both counters: this process's memory and a
real redis-server (skipped, with the reason, where none is installed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis

from flask_inference_gateway.core.errors import LimitsUnavailable, RateLimited
from flask_inference_gateway.fleet.semaphore import Semaphores
from flask_inference_gateway.security import usage
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.security.usage import (
    WINDOW,
    Counters,
    MemoryCounters,
    RedisCounters,
    UsageLedger,
    estimate_tokens,
)
from tests.integration.redis_server import RedisServer

ALICE = Principal("alice")
STORE_LOG = "flask_inference_gateway.fleet.store"


class BrokenCounters:
    """A store that is down."""

    def get(self, key: str) -> int:
        raise ConnectionError("redis is down")

    def add(self, key: str, amount: int, ttl: int) -> int:
        raise ConnectionError("redis is down")

    def reserve(self, key: str, wanted: int, least: int, limit: int,
                ttl: int) -> tuple[int, int]:
        raise ConnectionError("redis is down")

    def settle(self, key: str, delta: int) -> None:
        raise ConnectionError("redis is down")


class BrokenSemaphores:
    """Stream slots in a store that is down."""

    def take(self, name: str, cap: int) -> str | None:
        raise ConnectionError("redis is down")

    def give(self, name: str, token: str) -> None:
        raise ConnectionError("redis is down")


@pytest.fixture
def redis_url(module_redis: RedisServer) -> str:
    """Return the module's Redis."""
    return module_redis.url


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> Iterator[Counters]:
    """Return empty counters: in memory, or in the module's Redis."""
    if request.param == "memory":
        yield MemoryCounters()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=1)
    client.flushdb()
    yield RedisCounters(client)
    client.close()


def ledger(tokens: int = 0, streams: int = 0, fail_open: bool = True,
           counters: Counters | None = None, slots: Semaphores | None = None) -> UsageLedger:
    return UsageLedger(counters or MemoryCounters(), tokens_per_minute=tokens,
                       max_streams=streams, fail_open=fail_open, streams=slots)


def window_key(name: str = "alice", at: float | None = None) -> str:
    return f"gw:tpm:{name}:{int(time.time() if at is None else at) // WINDOW}"


def test_reserve_holds_the_worst_case_and_settle_keeps_what_was_used(counters) -> None:
    budget = ledger(tokens=100, counters=counters)
    held = budget.reserve(ALICE, 10, 30)
    assert (held.reserved, held.max_tokens) == (40, 30)
    assert counters.get(window_key()) == 40
    held.settle(25)
    assert counters.get(window_key()) == 25
    held.settle(99)  # settled once: a second settle changes nothing
    assert counters.get(window_key()) == 25


def test_a_reservation_that_does_not_fit_is_refused_until_one_settles(counters) -> None:
    budget = ledger(tokens=100, counters=counters)
    first = budget.reserve(ALICE, 10, 50)
    with pytest.raises(RateLimited) as caught:
        budget.reserve(ALICE, 10, 50)
    refused = caught.value
    assert refused.status == 429 and refused.details["limit"] == "tokens"
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW
    assert "40 tokens left" in refused.message and "needs 60" in refused.message
    assert counters.get(window_key()) == 60  # a refusal reserves nothing
    first.settle(20)
    assert budget.reserve(ALICE, 10, 50).reserved == 60
    assert counters.get(window_key()) == 80
    budget.reserve(Principal("bob"), 10, 90)  # every key has a budget of its own


def test_a_request_larger_than_the_budget_runs_with_what_is_left(counters) -> None:
    budget = ledger(tokens=100, counters=counters)
    whole = budget.reserve(ALICE, 10, 4096)
    assert (whole.reserved, whole.max_tokens) == (100, 90)
    whole.settle(30)
    rest = budget.reserve(ALICE, 10, 4096)
    assert (rest.reserved, rest.max_tokens) == (70, 60)
    rest.settle(95)  # the prompt was longer than its estimate: the real count is charged
    with pytest.raises(RateLimited) as caught:
        budget.reserve(ALICE, 10, 4096)  # 5 left: not even the prompt and one token fit
    assert "Retry-After" in caught.value.headers
    assert counters.get(window_key()) == 125


def test_a_prompt_larger_than_the_budget_is_refused_without_retry_after(counters) -> None:
    budget = ledger(tokens=100, counters=counters)
    for max_tokens in (0, 50, 4096):  # an embedding, a generation, a large generation
        with pytest.raises(RateLimited) as caught:
            budget.reserve(ALICE, 150, max_tokens)
        assert "Retry-After" not in caught.value.headers  # no window would ever fit it
        assert "more than the whole token budget of 100" in caught.value.message
    assert counters.get(window_key()) == 0


def test_an_embedding_reserves_its_estimate(counters) -> None:
    budget = ledger(tokens=100, counters=counters)
    held = budget.reserve(ALICE, estimate_tokens(["a" * 40, "b" * 80]))
    assert (held.reserved, held.max_tokens) == (30, 0)
    held.settle(28)
    assert counters.get(window_key()) == 28


def test_concurrent_reservations_never_exceed_the_budget(counters) -> None:
    """60 threads at once, 50 tokens each, budget 1000: exactly 20 get in."""
    budget = ledger(tokens=1000, counters=counters)
    start, granted, refused = threading.Barrier(60), [], []

    def one() -> None:
        start.wait()
        try:
            granted.append(budget.reserve(ALICE, 5, 45))
        except RateLimited:
            refused.append(1)

    threads = [threading.Thread(target=one) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(granted), len(refused)) == (20, 40)
    assert counters.get(window_key()) == 1000
    for held in granted:
        held.settle(10)
    assert counters.get(window_key()) == 200


def test_settle_lands_in_the_window_it_was_reserved_in(counters, monkeypatch) -> None:
    now = [1_000_000 * WINDOW + WINDOW - 1.0]  # the last second of a window
    monkeypatch.setattr(usage, "time", SimpleNamespace(time=lambda: now[0],
                                                       monotonic=time.monotonic))
    budget = ledger(tokens=100, counters=counters)
    held = budget.reserve(ALICE, 10, 80)
    old = window_key(at=now[0])
    now[0] += 2  # the window rolls over while the request runs
    fresh = budget.reserve(ALICE, 10, 80)  # a new window: the whole budget again
    held.settle(15)
    assert counters.get(old) == 15
    assert counters.get(window_key(at=now[0])) == fresh.reserved == 90


def test_a_forgotten_window_settles_nothing(counters, monkeypatch) -> None:
    monkeypatch.setattr(usage, "BUDGET_TTL", 0)  # the window's counter is gone at once
    held = ledger(tokens=100, counters=counters).reserve(ALICE, 10, 80)
    held.settle(5)  # giving back 85 must not leave a negative count behind
    assert counters.get(window_key()) == 0


@pytest.mark.parametrize(("own", "refused"), [(None, True), (1000, False), (0, False)],
                         ids=["default-budget", "own-larger-budget", "own-no-budget"])
def test_a_key_may_carry_its_own_budget(own: int | None, refused: bool) -> None:
    budget = ledger(tokens=10)
    key = Principal("carol", tokens_per_minute=own)
    budget.reserve(key, 5, 5).settle(10)
    if refused:
        with pytest.raises(RateLimited):
            budget.reserve(key, 1, 1)
    else:
        assert budget.reserve(key, 1, 1).max_tokens == 1


def test_no_budget_reserves_nothing() -> None:
    counters = MemoryCounters()
    held = ledger(tokens=0, counters=counters).reserve(ALICE, 10, 4096)
    assert (held.reserved, held.max_tokens) == (0, 4096)
    held.settle(5000)
    assert counters.get(window_key()) == 0


def test_stream_cap_and_release() -> None:
    caps = ledger(streams=2)
    first, second = caps.open_stream(ALICE), caps.open_stream(ALICE)
    with pytest.raises(RateLimited):
        caps.open_stream(ALICE)
    first()
    first()  # releasing twice frees one slot only
    third = caps.open_stream(ALICE)
    with pytest.raises(RateLimited):
        caps.open_stream(ALICE)
    second()
    third()
    assert caps.streams.taken == {}  # type: ignore[attr-defined]


def test_store_outage_fails_open_and_warns_once(caplog) -> None:
    down = ledger(tokens=10, streams=1, counters=BrokenCounters(), slots=BrokenSemaphores())
    with caplog.at_level(logging.WARNING, STORE_LOG):
        for _ in range(5):
            held = down.reserve(ALICE, 100, 4096)  # over budget, but nothing can count it
            assert held.max_tokens == 4096
            held.settle(5000)
            down.open_stream(ALICE)()
    assert caplog.text.count("unreachable") == 1


def test_store_outage_fails_closed_at_admission_only() -> None:
    counters = MemoryCounters()
    budget = ledger(tokens=100, fail_open=False, counters=counters)
    held = budget.reserve(ALICE, 10, 10)
    budget.counters = BrokenCounters()
    with pytest.raises(LimitsUnavailable) as caught:
        budget.reserve(ALICE, 10, 10)
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]
    held.settle(5)  # the request is over: an outage at settling is logged, never raised
    assert counters.get(window_key()) == 20


def test_recovery_is_logged(caplog) -> None:
    counters = MemoryCounters()
    budget = ledger(tokens=10, counters=counters)
    budget.counters = BrokenCounters()
    budget.reserve(ALICE, 1, 1)
    budget.counters = counters
    with caplog.at_level(logging.WARNING, STORE_LOG):
        budget.reserve(ALICE, 1, 1)
    assert "reachable again" in caplog.text
