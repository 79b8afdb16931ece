"""Fixtures of the fleet tests: one real Redis per module, admission in either store."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from flask_inference_gateway.fleet.admission import Admission, LocalAdmission
from flask_inference_gateway.fleet.shared import SharedAdmission
from tests.integration.redis_server import RedisServer


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
        return shared(request.getfixturevalue("module_redis"), cap, **options)

    return factory
