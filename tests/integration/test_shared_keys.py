"""Keys in Redis shared by two gateways (gunicorn, 2 workers each): created and revoked with the
CLI, accepted by every worker of both, and refused by all of them within a second of a revoke."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import ROOT, GatewayProcess
from tests.fake_ollama import FakeOllama
from tests.integration.redis_server import RedisServer
from tests.integration.test_gunicorn import call

ROUND = 8  # requests sent at once to a gateway, so that both of its workers answer some


def keys_env(redis: RedisServer, fake: FakeOllama) -> dict[str, str]:
    """Return the settings both gateways and the CLI share: named keys in ``redis``."""
    # Only the keys use Redis here: rate limits stay off (start_gateway's default).
    return {"GATEWAY_KEYS_BACKEND": "redis", "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_AUTH_DISABLED": "0", "GATEWAY_API_KEYS": "",
            "GATEWAY_OLLAMA_URL": fake.url, "GATEWAY_PROBE_SECONDS": "0"}


def run_cli(env: dict[str, str], *args: str) -> str:
    """Run ``flask --app wsgi keys ARGS`` as a subprocess; return what it printed."""
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "keys", *args],
                          cwd=ROOT, env={**os.environ, **env, "GATEWAY_LOG_LEVEL": "warning"},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def answers(server: GatewayProcess, key: str) -> list[tuple[str, int]]:
    """Send a round of concurrent requests with ``key``; return (worker, status) of each."""
    headers = {"Authorization": f"Bearer {key}"}
    with ThreadPoolExecutor(ROUND) as pool:
        replies = list(pool.map(lambda _: call(server.url, "/v1/models", method="GET",
                                               headers=headers, limit_s=5), range(ROUND)))
    # A generated request id starts with a random part drawn once per worker process
    # (api/records.py): it says which worker answered.
    return [(reply.headers["X-Request-ID"][:16], reply.status) for reply in replies]


def every_worker_answers(server: GatewayProcess, key: str, status: int) -> bool:
    """Return whether both workers answer ``status`` for ``key`` (every answer, until both
    have been seen; False at the first other answer)."""
    seen: set[str] = set()
    for _ in range(10):
        for worker, got in answers(server, key):
            if got != status:
                return False
            seen.add(worker)
        if len(seen) == 2:
            return True
    raise AssertionError(f"only worker {seen} answered")


def seconds_until(check: Callable[[], bool], timeout: float) -> float | None:
    """Return how long ``check`` took to hold (polled every 50 ms), or None after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_key_holds_and_is_revoked_on_every_replica(gateway_server, redis_server: RedisServer,
                                                     module_fake: FakeOllama) -> None:
    env = keys_env(redis_server, module_fake)
    with ThreadPoolExecutor(2) as pool:
        gateways = list(pool.map(lambda _: gateway_server(**env, GATEWAY_WORKERS="2"), range(2)))
    assert all(every_worker_answers(g, "gw-not-created-yet", 401) for g in gateways)
    created = run_cli(env, "create", "--name", "shared", "--weight", "2")
    raw = re.search(r"gw-[\w-]{40,}", created).group(0)  # type: ignore[union-attr]
    took = seconds_until(lambda: all(every_worker_answers(g, raw, 200) for g in gateways), 1.5)
    assert took is not None, "a worker still refuses the new key"

    run_cli(env, "revoke", "shared")
    took = seconds_until(lambda: all(every_worker_answers(g, raw, 401) for g in gateways), 1.5)
    assert took is not None, "a worker still accepts the revoked key"
    print(f"\nrevoked on 2 gateways x 2 workers within {took:.2f}s of 'keys revoke'")
    for gateway in gateways:
        assert "loaded 1 API keys from Redis" in gateway.log()
        assert raw not in gateway.log()
