"""Access control under real gunicorn + gevent: API keys, rate limits, budgets, Redis outages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from flask_inference_gateway.security.keys import KeyEntry, hash_key, new_key, write_key_file
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.fake_ollama import FakeOllama
from tests.integration.redis_server import AVAILABLE, RedisServer
from tests.integration.test_gunicorn import (
    Reply,
    call,
    error_of,
    wait_until,
)
from tests.integration.workers import sessions_on_each_worker, still_placed

if not AVAILABLE:
    pytest.skip("redis-server is not installed (CI installs it)", allow_module_level=True)

FAST = "1000/minute"
PROMPT = "one two three four"  # the fake counts 4 prompt tokens; it answers with 8 pieces
TOKENS_PER_ANSWER = 4 + 8
REALM = 'Bearer realm="gateway"'
# Settings of the module's gateway keys; each test uses keys of its own.
KEY_SETTINGS: dict[str, dict[str, Any]] = {
    "burst": {"rate_limit": "5/minute"},
    "routes": {"rate_limit": "5/minute"},
    "shared": {"rate_limit": "5/minute"},
    "budget": {"rate_limit": FAST, "tokens_per_minute": 30},
    "streamer": {"rate_limit": FAST, "tokens_per_minute": 10},
    "cutter": {"rate_limit": FAST, "tokens_per_minute": 100_000},
    "two-streams": {"rate_limit": FAST, "max_streams": 2},
    "sim-only": {"rate_limit": FAST, "models": ["sim"]},
    "plain": {"rate_limit": FAST},
    "old": {"rate_limit": FAST},
}
# (method, path, body) of every route that needs a key and counts against limits.
LIMITED_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/generate", {"prompt": PROMPT}),
    ("POST", "/v1/generate/stream", {"prompt": PROMPT}),
    ("POST", "/v1/chat", {"messages": [{"role": "user", "content": PROMPT}]}),
    ("POST", "/v1/chat/stream", {"messages": [{"role": "user", "content": PROMPT}]}),
    ("GET", "/v1/models", None),
]
PUBLIC_ROUTES = ["/healthz", "/readyz", "/docs", "/swagger.json"]
# Header templates; '{key}' stands for a valid key.
UNAUTHORIZED: dict[str, dict[str, str]] = {
    "missing": {},
    "unknown-bearer": {"Authorization": "Bearer gw-not-a-key-of-this-gateway"},
    "empty-bearer": {"Authorization": "Bearer "},
    "basic-scheme": {"Authorization": "Basic {key}"},
    "no-scheme": {"Authorization": "{key}"},
    "unknown-x-api-key": {"X-API-Key": "gw-not-a-key-of-this-gateway"},
}
ACCEPTED: dict[str, dict[str, str]] = {
    "bearer": {"Authorization": "Bearer {key}"},
    "lowercase-bearer": {"Authorization": "bearer {key}"},
    "x-api-key": {"X-API-Key": "{key}"},
}


@dataclass
class KeyFile:
    """A key file and the raw keys it holds the hashes of."""

    path: Path
    raw: dict[str, str]


def access_env(key_file: Path, **env: str) -> dict[str, str]:
    """Return a gateway environment with auth and limits on, every access setting explicit."""
    base = {"GATEWAY_AUTH_DISABLED": "0", "GATEWAY_RATE_LIMIT_DISABLED": "0",
            "GATEWAY_API_KEYS": "", "GATEWAY_API_KEYS_FILE": str(key_file),
            "GATEWAY_RATE_LIMIT": FAST, "GATEWAY_TOKENS_PER_MINUTE": "0",
            "GATEWAY_MAX_STREAMS": "0", "GATEWAY_REDIS_URL": "", "GATEWAY_REDIS_FAIL_OPEN": "1",
            "GATEWAY_TRUSTED_PROXIES": "0", "GATEWAY_READ_TIMEOUT": "10"}
    return {**base, **env}


def bearer(key: str) -> dict[str, str]:
    """Return the header that presents ``key``."""
    return {"Authorization": f"Bearer {key}"}


def send(session: requests.Session, url: str, path: str, body: Any,
         headers: dict[str, str]) -> Reply:
    """POST ``body`` on a kept-alive session and read the whole answer."""
    started = time.monotonic()
    with session.post(url + path, json=body, headers=headers, timeout=(5, 30)) as response:
        return Reply(response.status_code, response.headers, response.text,
                     time.monotonic() - started)


def statuses(replies: list[Reply]) -> Counter[int]:
    """Count the replies by status."""
    return Counter(reply.status for reply in replies)


def retry_after(reply: Reply) -> int:
    """Return the reply's Retry-After, checking that it is a whole number of seconds."""
    value = reply.headers["Retry-After"]
    assert value.isdigit(), value
    return int(value)


def assert_refused(reply: Reply, status: int, kind: str) -> dict[str, Any]:
    """Check a JSON error answer's status and type; return the error object."""
    assert reply.status == status, (reply.status, reply.text)
    error = error_of(reply)
    assert error["type"] == kind, error
    return error


def launch(env: dict[str, str], log_path: Path, timeout: float = 30) -> GatewayProcess:
    """Start gunicorn like start_gateway, but wait out a slow worker boot and never leak it."""
    # start_gateway's 1 s probe raises ReadTimeout while a worker still boots on a busy
    # machine, and that exception leaves its gunicorn running.
    full_env = {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{free_port()}",
                "GATEWAY_WORKERS": "1", "GATEWAY_LOG_LEVEL": "info", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                 "wsgi:app"], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    server = GatewayProcess("http://" + full_env["GATEWAY_BIND"], proc, log_path)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with requests.get(server.url + "/healthz", timeout=5) as response:
                if response.status_code == 200:
                    return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"gunicorn did not get ready within {timeout}s:\n{server.log()}")


def fresh_window(need_s: float) -> None:
    """Sleep into the next minute when fewer than ``need_s`` seconds are left in this one."""
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.05)


def tokens_charged(server: RedisServer, name: str) -> int:
    """Return the tokens the ledger has charged ``name`` in Redis (every window)."""
    with server.client() as client:
        return sum(int(client.get(key) or 0) for key in client.scan_iter(f"gw:tpm:{name}:*"))


def run_cli(key_file: Path, *args: str) -> str:
    """Run ``flask --app wsgi keys ARGS`` on ``key_file``; return its output."""
    env = {**os.environ, "GATEWAY_API_KEYS_FILE": str(key_file), "GATEWAY_API_KEYS": "",
           "GATEWAY_REDIS_URL": "", "GATEWAY_LOG_LEVEL": "warning"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "keys", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Run ``check`` every ``interval`` s until it holds; return the seconds it took, or None."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)
    return time.monotonic() - started


def generate(server: GatewayProcess, headers: dict[str, str], prompt: str = PROMPT) -> Reply:
    """POST /v1/generate with ``headers`` on a fresh connection."""
    return call(server.url, "/v1/generate", {"prompt": prompt}, headers=headers)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> KeyFile:
    """Write the module's key file: one fresh key per entry of KEY_SETTINGS."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    raw = {name: new_key() for name in KEY_SETTINGS}
    write_key_file(str(path), [KeyEntry(name, hash_key(raw[name]), **settings)
                               for name, settings in KEY_SETTINGS.items()])
    return KeyFile(path, raw)


@pytest.fixture
def keys(key_file: KeyFile) -> dict[str, str]:
    """Return the raw keys of the module's key file, by name."""
    return key_file.raw


@pytest.fixture(scope="module")
def gateway_env(key_file: KeyFile, shared_redis: RedisServer,
                module_fake: FakeOllama) -> dict[str, str]:
    """Return the environment of the module's gateways: key file, shared Redis, debug log."""
    return access_env(key_file.path, GATEWAY_WORKERS="2", GATEWAY_LOG_LEVEL="debug",
                      GATEWAY_REDIS_URL=shared_redis.url, GATEWAY_OLLAMA_URL=module_fake.url)


@pytest.fixture(scope="module")
def gateway(gateway_env: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run the module's gateway: two gevent workers counting in one Redis."""
    server = launch(gateway_env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Return a starter of this test's own gateways; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        started.append(launch(env, tmp_path / f"gunicorn-{len(started)}.log"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# --- request-rate limits ----------------------------------------------------------------------


def test_request_limit_is_exact_across_two_workers(gateway: GatewayProcess, fake: FakeOllama,
                                                   keys: dict[str, str]) -> None:
    """5/minute, 20 concurrent requests over 4 connections on both workers: 5 pass, 15 get 429."""
    headers, body = bearer(keys["burst"]), {"prompt": PROMPT}
    with sessions_on_each_worker(gateway, 2) as placed, ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda p: [send(p.session, gateway.url, "/v1/generate", body,
                                                headers) for _ in range(5)], placed))
        kept = still_placed(gateway, placed)
    replies = [reply for batch in batches for reply in batch]
    by_worker = Counter(p.pid for p in placed)
    print(f"\n5/minute, 20 requests, connections per worker {dict(by_worker)}: "
          f"{dict(statuses(replies))}")
    assert len(by_worker) == 2 and kept, "the requests did not stay spread over both workers"
    assert statuses(replies) == {200: 5, 429: 15}
    assert fake.stats["requests"] == 5, fake.stats
    for reply in replies:
        if reply.status == 429:
            assert_refused(reply, 429, "rate_limited")
            assert 1 <= retry_after(reply) <= 61, reply.headers
    passed = [reply for reply in replies if reply.status == 200]
    assert all(reply.headers["X-RateLimit-Limit"] == "5" for reply in passed)
    assert all(reply.headers["X-RateLimit-Reset"].isdigit() for reply in passed)
    assert {int(reply.headers["X-RateLimit-Remaining"]) for reply in passed} <= set(range(5))


def test_request_limit_counts_every_route_of_a_key(gateway: GatewayProcess, fake: FakeOllama,
                                                   keys: dict[str, str]) -> None:
    """A key's limit is per key (docs/security.md), not per route: 5 generates use up 5/minute."""
    headers = bearer(keys["routes"])
    assert [generate(gateway, headers).status for _ in range(5)] == [200] * 5
    chat = call(gateway.url, "/v1/chat", {"messages": [{"role": "user", "content": "hi"}]},
                headers=headers)
    assert_refused(chat, 429, "rate_limited")


def test_two_gateways_share_one_limit(gateway: GatewayProcess, gateway_env: dict[str, str],
                                      gateways: Callable[..., GatewayProcess], fake: FakeOllama,
                                      keys: dict[str, str]) -> None:
    """Two gunicorns on one Redis: 10 requests alternating between them, 5/minute: 5 pass."""
    servers = [gateway, gateways(**gateway_env)] * 5
    replies = [generate(server, bearer(keys["shared"])) for server in servers]
    print(f"\n5/minute over 2 gateways, 10 alternating requests: {dict(statuses(replies))}")
    assert [reply.status for reply in replies] == [200] * 5 + [429] * 5
    assert fake.stats["requests"] == 5, fake.stats


# --- token budgets and stream caps ------------------------------------------------------------


def test_token_budget_refuses_before_the_backend(gateway: GatewayProcess, fake: FakeOllama,
                                                 keys: dict[str, str]) -> None:
    """30 tokens a minute, 12 an answer: 2 whole answers, a third clamped to the 6 tokens left
    (it asks for more than the whole budget), then 429 that never reach the backend."""
    fresh_window(3)
    headers = bearer(keys["budget"])
    replies = [generate(gateway, headers) for _ in range(5)]
    replies.append(call(gateway.url, "/v1/generate/stream", {"prompt": PROMPT}, headers=headers))
    assert [reply.status for reply in replies] == [200] * 3 + [429] * 3
    usage = [json.loads(reply.text)["usage"]["total_tokens"] for reply in replies[:3]]
    assert usage == [TOKENS_PER_ANSWER, TOKENS_PER_ANSWER, 30 - 2 * TOKENS_PER_ANSWER]
    assert fake.stats["requests"] == 3, fake.stats
    for reply in replies[3:]:
        assert "token budget" in assert_refused(reply, 429, "rate_limited")["message"]
        assert 1 <= retry_after(reply) <= 60


def test_stream_is_charged_when_it_ends(gateway: GatewayProcess, shared_redis: RedisServer,
                                        fake: FakeOllama, keys: dict[str, str]) -> None:
    """A stream asking for more than a 10-token budget runs clamped to it, is charged what it
    used when it ends, and the next request gets 429."""
    fresh_window(3)
    headers = bearer(keys["streamer"])
    stream = call(gateway.url, "/v1/generate/stream", {"prompt": PROMPT}, headers=headers)
    assert stream.status == 200
    assert stream.data[-1].data["usage"]["total_tokens"] == 10  # 4 prompt + 6 allowed
    # The settle lands as the gateway closes the stream, just after the client read its end.
    assert wait_until(lambda: tokens_charged(shared_redis, "streamer") == 10, 3)
    assert_refused(generate(gateway, headers), 429, "rate_limited")
    assert fake.stats["requests"] == 1, fake.stats


def test_cut_stream_is_charged_for_what_it_relayed(gateway: GatewayProcess,
                                                   shared_redis: RedisServer, fake: FakeOllama,
                                                   keys: dict[str, str]) -> None:
    """A stream left after 3 pieces is charged its relayed pieces plus a prompt estimate."""
    prompt = "[[sim:itl=0.05]] [[sim:tokens=200]] " + "word " * 20
    estimate = len(prompt) // 4
    with requests.post(gateway.url + "/v1/generate/stream", json={"prompt": prompt},
                       headers=bearer(keys["cutter"]), stream=True, timeout=(5, 10)) as response:
        assert response.status_code == 200
        data = (line for line in response.iter_lines(chunk_size=None) if line)
        pieces = [json.loads(next(data).partition(b":")[2]) for _ in range(3)]
        assert pieces == [{"text": f" tok{i}"} for i in range(3)]
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats
    assert wait_until(lambda: tokens_charged(shared_redis, "cutter") > 0, 3)
    charged = tokens_charged(shared_redis, "cutter")
    print(f"\nstream cut after 3 pieces: charged {charged} (prompt estimate {estimate})")
    assert estimate + 3 <= charged < estimate + 200


def test_stream_cap_holds_across_workers(gateway: GatewayProcess, fake: FakeOllama,
                                         keys: dict[str, str]) -> None:
    """max_streams=2: a stream open on each worker, a third gets 429; closing one frees a slot."""
    headers = bearer(keys["two-streams"])
    long_body, short_body = {"prompt": "[[sim:itl=0.05]] [[sim:tokens=200]] go"}, {"prompt": "go"}
    with sessions_on_each_worker(gateway, 1) as placed, ExitStack() as streams:
        opened = [streams.enter_context(p.session.post(
            gateway.url + "/v1/generate/stream", json=long_body, headers=headers, stream=True,
            timeout=(5, 10))) for p in placed]
        for response in opened:
            assert response.status_code == 200
            assert next(response.iter_lines(chunk_size=None)).startswith(b"data: ")
        third = call(gateway.url, "/v1/generate/stream", short_body, headers=headers)
        assert "streams open" in assert_refused(third, 429, "rate_limited")["message"]
        assert retry_after(third) == 1
        opened[0].close()
        freed = eventually(lambda: call(gateway.url, "/v1/generate/stream", short_body,
                                        headers=headers).status == 200, 3)
    print(f"\nstream cap 2: third refused; slot free {freed}s after a client left")
    assert freed is not None


# --- Redis outages ----------------------------------------------------------------------------


def until_refused(server: GatewayProcess, key: str, timeout: float) -> list[tuple[float, Reply]]:
    """Send a request every 0.2 s until one gets 429; return each with its time."""
    started, seen = time.monotonic(), []
    while time.monotonic() - started < timeout:
        seen.append((time.monotonic() - started, generate(server, bearer(key))))
        if seen[-1][1].status == 429:
            break
        time.sleep(0.2)
    return seen


def log_lines(server: GatewayProcess, since: int, *texts: str) -> list[str]:
    """Return the log lines after offset ``since`` that contain one of ``texts``."""
    return [line for line in server.log()[since:].splitlines()
            if any(text in line for text in texts)]


@pytest.mark.parametrize(("outage", "tokens_per_minute"), [
    ("kill", "100000"), ("freeze", "100000"), ("kill", "0"),
], ids=["killed-with-budget", "frozen-with-budget", "killed-no-budget"])
def test_fail_open_rides_out_a_redis_outage(redis_server: RedisServer,
                                            gateways: Callable[..., GatewayProcess],
                                            fake: FakeOllama, tmp_path: Path, outage: str,
                                            tokens_per_minute: str) -> None:
    """Fail-open: requests pass fast without Redis, the limit returns with it, one log line each."""
    before, after = new_key(), new_key()
    server = gateways(**access_env(
        tmp_path / "keys.json", GATEWAY_API_KEYS=f"before:{before},after:{after}",
        GATEWAY_RATE_LIMIT="2/minute", GATEWAY_TOKENS_PER_MINUTE=tokens_per_minute,
        GATEWAY_REDIS_URL=redis_server.url, GATEWAY_OLLAMA_URL=fake.url))
    assert [generate(server, bearer(before)).status for _ in range(3)] == [200, 200, 429]
    since = len(server.log())
    if outage == "kill":
        redis_server.stop()
    else:
        redis_server.freeze()
    during = [generate(server, bearer(before)) for _ in range(3)]
    if outage == "kill":
        redis_server.start()  # empty, on the same port
    else:
        redis_server.thaw()
    seen = until_refused(server, after, timeout=12)
    back = next((at for at, reply in seen if "X-RateLimit-Limit" in reply.headers), None)
    print(f"\n{outage}, tokens/min {tokens_per_minute}: during {[r.status for r in during]} "
          f"(slowest {max(r.elapsed for r in during):.2f}s); limit back {back}s, "
          f"429 after {seen[-1][0]:.2f}s")
    assert [reply.status for reply in during] == [200] * 3
    assert max(reply.elapsed for reply in during) < 2.5
    assert [reply.status for _, reply in seen[-3:]] == [200, 200, 429], seen
    assert "Traceback" not in server.log()[since:]
    assert 1 <= len(log_lines(server, since, "unreachable")) <= 2, server.log()[since:]
    # Flask-Limiter says "recovered", the token ledger "reachable again".
    recovered = log_lines(server, since, "reachable again", "storage recovered")
    assert 1 <= len(recovered) <= 2, server.log()[since:]


def test_fail_closed_answers_503_never_500(redis_server: RedisServer,
                                          gateways: Callable[..., GatewayProcess],
                                          fake: FakeOllama, tmp_path: Path) -> None:
    """Fail-closed: Redis down, every limited route gets 503 with Retry-After; back, 200 again."""
    key = new_key()
    server = gateways(**access_env(
        tmp_path / "keys.json", GATEWAY_API_KEYS=f"closed:{key}", GATEWAY_REDIS_FAIL_OPEN="0",
        GATEWAY_TOKENS_PER_MINUTE="100000", GATEWAY_REDIS_URL=redis_server.url,
        GATEWAY_OLLAMA_URL=fake.url))
    assert generate(server, bearer(key)).status == 200
    since, sent = len(server.log()), fake.stats["requests"]
    redis_server.stop()
    replies = [call(server.url, path, body, method=method, headers=bearer(key))
               for method, path, body in LIMITED_ROUTES]
    for reply in replies:
        assert_refused(reply, 503, "limits_unavailable")
        assert retry_after(reply) == 1 and reply.elapsed < 2.5
    assert fake.stats["requests"] == sent, fake.stats
    assert call(server.url, "/healthz", method="GET").status == 200
    warnings = len(log_lines(server, since, "WARNING"))
    redis_server.start()
    back = eventually(lambda: generate(server, bearer(key)).status == 200, 10, 0.2)
    print(f"\nfail-closed: {[r.status for r in replies]}, {warnings} warning lines for "
          f"{len(replies)} refusals; 200 again {back}s after Redis returned")
    assert back is not None
    assert "Traceback" not in server.log()[since:]


# --- API keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", list(UNAUTHORIZED.values()), ids=list(UNAUTHORIZED))
def test_request_without_a_valid_key_gets_401(gateway: GatewayProcess, fake: FakeOllama,
                                              keys: dict[str, str],
                                              headers: dict[str, str]) -> None:
    """No key, an unknown key or a key in the wrong scheme: 401 with WWW-Authenticate."""
    sent = {name: value.format(key=keys["plain"]) for name, value in headers.items()}
    reply = generate(gateway, sent)
    assert_refused(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"] == REALM
    assert fake.stats["requests"] == 0, fake.stats


@pytest.mark.parametrize(("method", "path", "body"), LIMITED_ROUTES,
                         ids=[path for _, path, _ in LIMITED_ROUTES])
def test_every_route_but_public_ones_needs_a_key(gateway: GatewayProcess, fake: FakeOllama,
                                                 method: str, path: str, body: Any) -> None:
    """Every inference route and the model list answer 401 without a key."""
    reply = call(gateway.url, path, body, method=method)
    assert_refused(reply, 401, "unauthorized")
    assert fake.stats["requests"] == 0, fake.stats


@pytest.mark.parametrize("headers", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_valid_key_is_accepted(gateway: GatewayProcess, fake: FakeOllama, keys: dict[str, str],
                               headers: dict[str, str]) -> None:
    """A valid key passes as a Bearer token (any case of 'Bearer') or as X-API-Key."""
    sent = {name: value.format(key=keys["plain"]) for name, value in headers.items()}
    assert generate(gateway, sent).status == 200


@pytest.mark.parametrize("path", PUBLIC_ROUTES, ids=PUBLIC_ROUTES)
def test_public_routes_need_no_key(gateway: GatewayProcess, fake: FakeOllama, path: str) -> None:
    """Health, readiness and the docs answer without a key and carry no rate-limit headers."""
    reply = call(gateway.url, path, method="GET")
    assert reply.status == 200, reply.text
    assert "X-RateLimit-Limit" not in reply.headers


@pytest.mark.parametrize(("path", "model", "status"), [
    ("/v1/generate", "llama3.2", 403), ("/v1/generate/stream", "llama3.2", 403),
    ("/v1/generate", None, 403), ("/v1/generate", "sim", 200), ("/v1/generate", "sim:latest", 200),
], ids=["other-model", "other-model-stream", "default-model", "allowed", "allowed-latest"])
def test_key_limited_to_models(gateway: GatewayProcess, fake: FakeOllama, keys: dict[str, str],
                               path: str, model: str | None, status: int) -> None:
    """A key whose entry lists models may use those only: others get 403 naming the allowed."""
    body = {"prompt": PROMPT, **({"model": model} if model else {})}
    reply = call(gateway.url, path, body, headers=bearer(keys["sim-only"]))
    assert reply.status == status, reply.text
    if status == 403:
        assert assert_refused(reply, 403, "forbidden")["allowed_models"] == ["sim"]
        assert fake.stats["requests"] == 0, fake.stats


def test_gateway_without_keys_says_how_to_create_one(gateways: Callable[..., GatewayProcess],
                                                     fake: FakeOllama, tmp_path: Path) -> None:
    """No key configured: 401 that says 'keys create'; after 'keys ensure' its key works."""
    path = tmp_path / "keys.json"
    server = gateways(**access_env(path, GATEWAY_OLLAMA_URL=fake.url))
    reply = generate(server, bearer(new_key()))
    assert "keys create" in assert_refused(reply, 401, "unauthorized")["message"]
    assert call(server.url, "/healthz", method="GET").status == 200
    key = next(line for line in run_cli(path, "ensure").splitlines() if line.startswith("gw-"))
    took = eventually(lambda: generate(server, bearer(key)).status == 200, 3)
    print(f"\nno keys: 401 names 'keys create'; the 'keys ensure' key works after {took}s")
    assert took is not None


def test_keys_never_reach_the_log(gateway: GatewayProcess, fake: FakeOllama,
                                  keys: dict[str, str]) -> None:
    """At debug level, neither a valid nor an invalid key (nor its hash) is ever logged."""
    valid, invalid = keys["plain"], new_key()
    since = len(gateway.log())
    for headers in (bearer(valid), {"X-API-Key": valid}, {"Authorization": f"Basic {valid}"},
                    bearer(invalid), {"X-API-Key": invalid}):
        for path, body in (("/v1/generate", {"prompt": "[[sim:status=500]] hi"}),
                           ("/v1/generate/stream", {"prompt": PROMPT}),
                           ("/v1/chat", {"messages": []})):
            call(gateway.url, path, body, headers=headers)
    logged = gateway.log()
    print(f"\n{len(logged[since:].splitlines())} log lines from 15 requests with keys")
    assert logged[since:], "the requests logged nothing: the check would prove nothing"
    for secret in (valid, invalid, hash_key(valid)[7:], hash_key(invalid)[7:]):
        assert secret not in logged


def test_key_file_changes_apply_without_restart(gateway: GatewayProcess, fake: FakeOllama,
                                                key_file: KeyFile) -> None:
    """CLI create and revoke reach both running workers within 3 s; 'keys list' shows no secret."""
    old = key_file.raw["old"]
    assert generate(gateway, bearer(old)).status == 200
    created = run_cli(key_file.path, "create", "--name", "new", "--rate", FAST)
    new = created.strip().splitlines()[-1]
    run_cli(key_file.path, "revoke", "old")
    with sessions_on_each_worker(gateway, 1) as placed:
        took = eventually(lambda: all(
            (send(p.session, gateway.url, "/v1/generate", {"prompt": PROMPT}, bearer(new)).status,
             send(p.session, gateway.url, "/v1/generate", {"prompt": PROMPT}, bearer(old)).status)
            == (200, 401) for p in placed), 3)
    print(f"\nkey file change: both workers took 'new' and refused 'old' after {took}s")
    assert took is not None
    listed = run_cli(key_file.path, "list")
    assert [line.split("\t")[0] for line in listed.splitlines()] == [
        name for name in KEY_SETTINGS if name != "old"] + ["new"]
    assert new not in listed and hash_key(new)[7:] not in listed


# --- client addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(("proxies", "forwarded", "expected"), [
    ("0", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], [200, 200, 429]),
    ("1", ["10.0.0.1", "10.0.0.1", "1.2.3.4, 10.0.0.1", "10.0.0.2"], [200, 200, 429, 200]),
], ids=["no-trusted-proxy", "one-trusted-proxy"])
def test_forwarded_for_counts_only_from_trusted_proxies(gateways: Callable[..., GatewayProcess],
                                                        fake: FakeOllama, tmp_path: Path,
                                                        proxies: str, forwarded: list[str],
                                                        expected: list[int]) -> None:
    """Auth off, 2/minute per address: only a trusted proxy's X-Forwarded-For names the client."""
    server = gateways(**access_env(
        tmp_path / "keys.json", GATEWAY_AUTH_DISABLED="1", GATEWAY_RATE_LIMIT="2/minute",
        GATEWAY_TRUSTED_PROXIES=proxies, GATEWAY_OLLAMA_URL=fake.url))
    got = [generate(server, {"X-Forwarded-For": value}).status for value in forwarded]
    assert got == expected
