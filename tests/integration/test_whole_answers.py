"""Whole answers are streamed from the backend, so they get the timeouts and care of streams.

A backend that hangs before its first token answers 504 after
GATEWAY_FIRST_TOKEN_TIMEOUT on every surface, whole or streamed, not after the
total deadline; and a client that leaves while its whole answer is being
generated stops the generation upstream.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest
import requests

from tests.conftest import GatewayProcess
from tests.fake_ollama import FakeOllama
from tests.integration.test_gunicorn import run_gateway, wait_until

FIRST_TOKEN_TIMEOUT = 2.0
HANG = "[[sim:hang]]"
# path -> body, with the hanging prompt
HANGING = {
    "/v1/generate": {"prompt": HANG},
    "/v1/generate/stream": {"prompt": HANG},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": HANG}]},
    "/api/generate": {"prompt": HANG, "stream": False},
}


@pytest.fixture(scope="module")
def gateway(module_fake: FakeOllama,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run a gateway whose first-token timeout is far below its total deadline."""
    yield from run_gateway(tmp_path_factory, GATEWAY_OLLAMA_URL=module_fake.url,
                           GATEWAY_FIRST_TOKEN_TIMEOUT=str(FIRST_TOKEN_TIMEOUT),
                           GATEWAY_TOTAL_TIMEOUT="60", GATEWAY_MAX_ATTEMPTS="1",
                           GATEWAY_BREAKER_FAILURES="1000000")


@pytest.mark.parametrize("path", HANGING)
def test_a_hanging_backend_is_a_504_after_the_first_token_timeout(
        gateway: GatewayProcess, fake: FakeOllama, path: str) -> None:
    started = time.monotonic()
    response = requests.post(gateway.url + path, json=HANGING[path], timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert FIRST_TOKEN_TIMEOUT - 0.1 <= elapsed < FIRST_TOKEN_TIMEOUT + 3, elapsed
    assert response.headers["Content-Type"].startswith("application/json")
    assert wait_until(lambda: fake.stats["cancelled"] == 1, 5), fake.stats  # the GPU stops


def test_a_client_leaving_a_whole_answer_stops_the_generation(gateway: GatewayProcess,
                                                              fake: FakeOllama) -> None:
    body = orjson.dumps({"prompt": "[[sim:tokens=60]] [[sim:itl=0.1]]", "max_tokens": 64})
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: gw\r\n"
                       b"Content-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(lambda: fake.stats["active"] == 1, 5), fake.stats
        time.sleep(0.5)  # tokens are flowing into the gateway; nothing reached the client
    # 60 tokens take 6 s; the client watch notices the departure within about 0.5 s.
    assert wait_until(lambda: fake.stats["cancelled"] == 1, 3), fake.stats
    assert fake.stats["completed"] == 0


def test_a_whole_answer_still_carries_the_backends_counts(gateway: GatewayProcess,
                                                          fake: FakeOllama) -> None:
    answer = requests.post(gateway.url + "/v1/generate", json={"prompt": "one two three"},
                           timeout=10).json()
    assert answer["text"] == "".join(f" tok{i}" for i in range(8))
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    assert fake.requests_seen[0]["stream"] is True
