"""Fixtures of the integration tests: a throwaway Redis, fake backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.integration.redis_server import AVAILABLE, RedisServer
from tests.integration.test_gunicorn import idle_fake


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


@pytest.fixture
def fake(module_fake: FakeOllama) -> FakeOllama:
    """Return the module's fake, idle and with zeroed counters."""
    return idle_fake(module_fake)


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeOllama]]:
    """Return a starter of fake backends (Ollama, or OpenAI with openai=True); all stop after."""
    with ExitStack() as stack:
        def start(openai: bool = False, **kwargs: object) -> FakeOllama:
            kind = FakeOpenAI if openai else FakeOllama
            return stack.enter_context(kind(**{"tokens": 4, **kwargs}))  # type: ignore[arg-type]
        yield start
