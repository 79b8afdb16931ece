"""Token budgets reserved before the GPU, under real gunicorn + gevent workers and one Redis.

A request reserves its worst case (prompt estimate + max_tokens) in its key's
minute window before it reaches a backend, atomically in Redis, so a burst on
both workers cannot overrun the budget; each settles to what it used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from flask_inference_gateway.security.keys import new_key
from tests.conftest import GatewayProcess
from tests.fake_ollama import FakeOllama
from tests.integration.redis_server import AVAILABLE, RedisServer
from tests.integration.test_access import (
    access_env,
    assert_refused,
    bearer,
    fresh_window,
    launch,
    retry_after,
    send,
    sessions_on_each_worker,
    tokens_charged,
)
from tests.integration.test_gunicorn import idle_fake, wait_until

if not AVAILABLE:
    pytest.skip("redis-server is not installed (CI installs it)", allow_module_level=True)

BUDGET = 1000
MAX_TOKENS = 100
PROMPT = "one two three four"  # the gateway estimates 18 // 4 = 4 tokens, the fake counts 4
WORST = 4 + MAX_TOKENS  # what each request reserves: 9 fit in the budget, a 10th does not
ANSWER = 30  # pieces the fake sends: each request uses 34 tokens and gives 70 back


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeOllama]:
    """Run a fake Ollama slow to its first token, so no request ends before all are in."""
    with FakeOllama(tokens=ANSWER, ttft=1.5) as fake:
        yield fake


@pytest.fixture
def fake(module_fake: FakeOllama) -> FakeOllama:
    """Return the module's fake, idle and with zeroed counters."""
    return idle_fake(module_fake)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    """Return one fresh key per test of the module, by name."""
    return {name: new_key() for name in ("burst", "leaver")}


@pytest.fixture(scope="module")
def gateway(shared_redis: RedisServer, module_fake: FakeOllama, keys: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run two gevent workers counting in one Redis; every key has BUDGET tokens a minute."""
    folder = tmp_path_factory.mktemp("budgets")
    env = access_env(folder / "keys.json", GATEWAY_API_KEYS=",".join(
        f"{name}:{key}" for name, key in keys.items()), GATEWAY_WORKERS="2",
        GATEWAY_TOKENS_PER_MINUTE=str(BUDGET), GATEWAY_REDIS_URL=shared_redis.url,
        GATEWAY_OLLAMA_URL=module_fake.url)
    server = launch(env, folder / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


def test_a_burst_on_two_workers_never_reserves_more_than_the_budget(
        gateway: GatewayProcess, fake: FakeOllama, shared_redis: RedisServer,
        keys: dict[str, str]) -> None:
    """1,000 tokens a minute, 20 requests at once of 104 tokens' worst case each: 9 reach the
    backend, 11 get 429 with Retry-After, and Redis holds the usage the backend reported."""
    body, headers = {"prompt": PROMPT, "max_tokens": MAX_TOKENS}, bearer(keys["burst"])
    with sessions_on_each_worker(gateway, 10) as placed, ThreadPoolExecutor(20) as pool:
        fresh_window(3)  # one minute's window for the whole burst
        replies = list(pool.map(lambda p: send(p.session, gateway.url, "/v1/generate", body,
                                               headers), placed))
    passed = [reply for reply in replies if reply.status == 200]
    used = [json.loads(reply.text)["usage"]["total_tokens"] for reply in passed]
    print(f"\nbudget {BUDGET}, 20 requests of worst case {WORST} over 2 workers: "
          f"{len(passed)} passed, backend saw {fake.stats['requests']}, used {sum(used)}, "
          f"slowest {max(reply.elapsed for reply in replies):.2f}s")
    assert len({p.pid for p in placed}) == 2
    assert fake.stats["requests"] == len(passed) <= 10
    assert len(passed) == BUDGET // WORST  # all were admitted while the first ones ran
    assert used == [4 + ANSWER] * len(passed)
    for reply in replies:
        if reply.status == 429:
            error = assert_refused(reply, 429, "rate_limited")
            assert "token budget" in error["message"] and f"needs {WORST}" in error["message"]
            assert 1 <= retry_after(reply) <= 60
    # Whole answers settle before they are sent: what is left reserved is what was used.
    assert tokens_charged(shared_redis, "burst") == sum(used)


def test_a_client_that_leaves_gives_back_the_rest_of_its_reservation(
        gateway: GatewayProcess, fake: FakeOllama, shared_redis: RedisServer,
        keys: dict[str, str]) -> None:
    """A stream reserving 904 tokens, left after its first piece, keeps only what it used:
    a request for 500 more tokens then fits in the same minute."""
    fresh_window(3)
    headers = bearer(keys["leaver"])
    prompt = PROMPT + " [[sim:tokens=900]] [[sim:itl=0.05]] [[sim:ttft=0]]"
    estimate = len(prompt) // 4
    with requests.post(gateway.url + "/v1/generate/stream", headers=headers, stream=True,
                       json={"prompt": prompt, "max_tokens": 900}, timeout=(5, 10)) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines(chunk_size=None) if line)
        assert tokens_charged(shared_redis, "leaver") == estimate + 900  # reserved while open
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats
    assert wait_until(lambda: tokens_charged(shared_redis, "leaver") < estimate + 900, 3)
    charged = tokens_charged(shared_redis, "leaver")
    print(f"\nstream left after its first piece: {charged} of {estimate + 900} kept")
    assert estimate + 1 <= charged < estimate + 50
    with requests.post(gateway.url + "/v1/generate", headers=headers, timeout=(5, 10),
                       json={"prompt": "[[sim:ttft=0]] go", "max_tokens": 500}) as after:
        assert after.status_code == 200, after.text
