"""Fixtures of the fleet tests: one real Redis per module, admission in either store."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_inference_gateway.fleet.admission import Admission, LocalAdmission
from flask_inference_gateway.fleet.shared import SharedAdmission
from tests.integration.redis_server import AVAILABLE, RedisServer


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[RedisServer]:
    """Run one Redis for the module; each test keeps to its own key prefix."""
    if not AVAILABLE:
        pytest.skip("redis-server is not installed (CI installs it)")
    with RedisServer() as server:
        yield server


def shared(server: RedisServer, cap: int, prefix: str = "", **options: Any) -> SharedAdmission:
    """Return admission in ``server`` under ``prefix`` (default: a fresh one)."""
    fallback = LocalAdmission(cap, queue_size=options.get("queue_size", 100))
    return SharedAdmission(server.client(), cap, fallback=fallback,
                           prefix=prefix or f"t-{uuid.uuid4().hex[:8]}:", **options)


@pytest.fixture(params=["local", "redis"])
def make_admission(request: pytest.FixtureRequest) -> Callable[..., Admission]:
    """Return a factory of admissions kept in this process, or in a real Redis."""

    def factory(cap: int, **options: Any) -> Admission:
        if request.param == "local":
            return LocalAdmission(cap, **options)
        return shared(request.getfixturevalue("fleet_redis"), cap, **options)

    return factory
