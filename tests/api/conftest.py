"""Fixtures of the API tests: a gateway in front of a fake OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient

from tests.fake_openai import FakeOpenAI


@pytest.fixture
def fake_vllm() -> Iterator[FakeOpenAI]:
    """Run a fake OpenAI-compatible server."""
    with FakeOpenAI(tokens=4) as fake:
        yield fake


@pytest.fixture
def vllm_client(make_client: Callable[..., FlaskClient], fake_vllm: FakeOpenAI) -> FlaskClient:
    """Return a client of a gateway whose only backend is the fake OpenAI-compatible server."""
    return make_client(GATEWAY_OLLAMA_URL="", GATEWAY_OPENAI_URL=fake_vllm.url + "/v1")
