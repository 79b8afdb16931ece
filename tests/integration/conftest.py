"""Fixtures of the integration tests: a throwaway Redis, a fake Ollama per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_ollama import FakeOllama
from tests.integration.redis_server import AVAILABLE, RedisServer


def started_redis() -> Iterator[RedisServer]:
    """Start a Redis for a test or module and always stop it; skip when none is installed."""
    if not AVAILABLE:
        pytest.skip("redis-server is not installed (CI installs it)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Run a Redis of this test's own, which the test may stop, freeze or restart."""
    yield from started_redis()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """Run one Redis for a whole module; tests keep apart by key name."""
    yield from started_redis()


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeOllama]:
    """Run the fake Ollama that this module's gateway calls."""
    with FakeOllama(tokens=8) as fake:
        yield fake
