"""Stream slots per key: counted in this process, or leased in a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from flask_inference_gateway.fleet.semaphore import (
    MemorySemaphores,
    RedisSemaphores,
    Semaphores,
)
from flask_inference_gateway.fleet.store import Keeper
from tests.integration.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Callable[..., Semaphores]:
    def factory(lease_seconds: float = 5.0) -> Semaphores:
        if request.param == "memory":
            return MemorySemaphores()
        return RedisSemaphores(request.getfixturevalue("module_redis").client(), lease_seconds)
    return factory


def test_a_cap_is_a_cap_and_a_freed_slot_is_free(make: Callable[..., Semaphores]) -> None:
    slots, name = make(), f"streams:{uuid.uuid4().hex}"
    tokens = [slots.take(name, 2), slots.take(name, 2)]
    assert all(tokens) and slots.take(name, 2) is None
    assert slots.take(name + "-other-key", 2)  # each name counts alone
    slots.give(name, tokens[0])  # type: ignore[arg-type]
    assert slots.take(name, 2) is not None and slots.take(name, 2) is None


def test_slots_of_a_dead_process_lapse_and_live_ones_are_renewed(
        module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"streams:{uuid.uuid4().hex}"
    dead = RedisSemaphores(module_redis.client(), lease_seconds=0.5)
    monkeypatch.setattr(dead, "_keeper", Keeper(dead.renew, 3600, "slots"))  # never renews
    alive = RedisSemaphores(module_redis.client(), lease_seconds=0.5)
    assert dead.take(name, 2) and alive.take(name, 2)
    assert alive.take(name, 2) is None
    time.sleep(1.2)  # more than two lives of a lease; the live one was renewed meanwhile
    assert alive.take(name, 2) is not None  # the dead one's slot came back ...
    assert alive.take(name, 2) is None  # ... and only that one
