"""Token budgets and stream caps, and what a store outage means."""

from __future__ import annotations

import logging

import pytest

from flask_inference_gateway.core.errors import LimitsUnavailable, RateLimited
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.security.usage import MemoryCounters, UsageLedger

ALICE = Principal("alice")


class BrokenCounters:
    """A store that is down."""

    def get(self, key: str) -> int:
        raise ConnectionError("redis is down")

    def add(self, key: str, amount: int, ttl: int) -> int:
        raise ConnectionError("redis is down")


def ledger(tokens: int = 0, streams: int = 0, fail_open: bool = True,
           counters=None) -> UsageLedger:
    return UsageLedger(counters or MemoryCounters(), tokens_per_minute=tokens,
                       max_streams=streams, fail_open=fail_open)


def test_token_budget_refuses_once_spent() -> None:
    budget = ledger(tokens=100)
    budget.check_tokens(ALICE)
    budget.charge(ALICE, 60)
    budget.check_tokens(ALICE)
    budget.charge(ALICE, 40)
    with pytest.raises(RateLimited) as caught:
        budget.check_tokens(ALICE)
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    budget.check_tokens(Principal("bob"))


@pytest.mark.parametrize(("own", "refused"), [(None, True), (1000, False), (0, False)],
                         ids=["default-budget", "own-larger-budget", "own-no-budget"])
def test_a_key_may_carry_its_own_budget(own: int | None, refused: bool) -> None:
    budget = ledger(tokens=10)
    key = Principal("carol", tokens_per_minute=own)
    budget.charge(key, 50)
    if refused:
        with pytest.raises(RateLimited):
            budget.check_tokens(key)
    else:
        budget.check_tokens(key)


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
    assert caps.counters.get("gw:streams:alice") == 0


def test_store_outage_fails_open_and_warns_once(caplog) -> None:
    down = ledger(tokens=10, streams=1, counters=BrokenCounters())
    with caplog.at_level(logging.WARNING, "flask_inference_gateway.security.usage"):
        for _ in range(5):
            down.check_tokens(ALICE)
            down.charge(ALICE, 100)
            down.open_stream(ALICE)()
    assert caplog.text.count("unreachable") == 1


def test_store_outage_fails_closed() -> None:
    down = ledger(tokens=10, fail_open=False, counters=BrokenCounters())
    with pytest.raises(LimitsUnavailable) as caught:
        down.check_tokens(ALICE)
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]


def test_recovery_is_logged(caplog) -> None:
    counters = MemoryCounters()
    budget = ledger(tokens=10, counters=counters)
    budget.counters = BrokenCounters()
    budget.check_tokens(ALICE)
    budget.counters = counters
    with caplog.at_level(logging.WARNING, "flask_inference_gateway.security.usage"):
        budget.check_tokens(ALICE)
    assert "reachable again" in caplog.text
