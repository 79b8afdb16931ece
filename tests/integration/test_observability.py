"""Observability under real gunicorn with two gevent workers: metrics, access log, request ids."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import TEST_KEY, GatewayProcess, start_gateway
from tests.fake_ollama import FakeOllama
from tests.integration.test_gunicorn import call, read_until
from tests.integration.workers import Placed, sessions_on_each_worker, still_placed

KEY = {"Authorization": f"Bearer {TEST_KEY}"}
METRICS_TOKEN = "obs-metrics-token-not-secret"
MODEL = "sim"
GENERATED = 32  # hex characters of a request id the gateway made up
REQUESTS_SPREAD = 40
OPEN_STREAMS = 10
SLOW = "[[sim:tokens=400]] [[sim:itl=0.02]] go"  # 8 s unless the client leaves
MEDIUM = "[[sim:tokens=150]] [[sim:itl=0.02]] go"  # 3 s
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000)
LOADED = {"name": "sim:latest", "model": "sim:latest", "size": 100, "size_vram": 12345,
          "expires_at": "2026-12-01T00:00:00Z"}
# Fields of an access line; fields without a value are left out.
BASE_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "route", "status",
               "duration_ms"}
ANSWER_FIELDS = BASE_FIELDS | {"key", "model", "backend", "upstream", "prompt_tokens",
                               "completion_tokens"}
STREAM_FIELDS = ANSWER_FIELDS | {"ttft_ms", "stream", "pieces", "client_left"}
REFUSED_FIELDS = BASE_FIELDS | {"error", "error_message"}
FAILED_FIELDS = BASE_FIELDS | {"key", "model", "backend", "upstream", "error", "error_message"}


# --- helpers ----------------------------------------------------------------------------------


def gateway_env(fake: FakeOllama, folder: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a two-worker gateway with API keys on and limits off."""
    return {"GATEWAY_WORKERS": "2", "GATEWAY_AUTH_DISABLED": "0",
            "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
            "GATEWAY_API_KEYS_FILE": str(folder / "keys.json"),
            "GATEWAY_RATE_LIMIT_DISABLED": "1", "GATEWAY_LOG_LEVEL": "info",
            "GATEWAY_OLLAMA_URL": fake.url, "GATEWAY_READ_TIMEOUT": "10",
            "GATEWAY_GRACEFUL_TIMEOUT": "2", "GATEWAY_POLL_SECONDS": "0",
            "GATEWAY_METRICS_TOKEN": METRICS_TOKEN, **extra}


def scrape(server: GatewayProcess) -> list[Sample]:
    """GET /metrics with the metrics token; return every sample of the exposition."""
    with requests.get(server.url + "/metrics", timeout=5,
                      headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as response:
        assert response.status_code == 200, response.text
        text = response.text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Return the sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def metric(server: GatewayProcess, name: str, **labels: str) -> float:
    """Scrape once and return one summed value."""
    return value(scrape(server), name, **labels)


def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Run ``check`` every ``interval`` s until it holds; return the seconds it took, or None."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)
    return time.monotonic() - started


def generate_body(prompt: str, **extra: Any) -> dict[str, Any]:
    """Return a generate body for the fake's ``sim`` model."""
    return {"model": MODEL, "prompt": prompt, **extra}


def open_raw_stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> socket.socket:
    """Send POST /v1/generate/stream with ``headers`` on a raw socket; return it unread."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    extra = "".join(f"{name}: {text}\r\n" for name, text in headers.items())
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.sendall((f"POST /v1/generate/stream HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}"
                  f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                  "Connection: close\r\n\r\n").encode() + payload)
    return sock


def access_lines(server: GatewayProcess) -> list[dict[str, Any]]:
    """Return the parsed lines of logger app.access written so far."""
    lines = []
    for raw in server.log().splitlines():
        with suppress(ValueError):  # a line still being written
            line = json.loads(raw)
            if isinstance(line, dict) and line.get("logger") == "flask_inference_gateway.access":
                lines.append(line)
    return lines


def lines_of(server: GatewayProcess, request_id: str, timeout: float = 3) -> list[dict[str, Any]]:
    """Wait for the access line of ``request_id`` (and a moment for a duplicate); return all."""
    def found() -> bool:
        return any(line.get("request_id") == request_id for line in access_lines(server))

    assert eventually(found, timeout) is not None, f"no access line for {request_id}"
    time.sleep(0.2)
    return [line for line in access_lines(server) if line.get("request_id") == request_id]


def new_id(tag: str) -> str:
    """Return a well-formed request id unique to this run."""
    return f"obs-{tag}-{os.urandom(6).hex()}"


@dataclass
class OpenStream:
    """A stream being read on a placed session: its worker, response and line iterator."""

    pid: int
    response: requests.Response
    lines: Iterator[bytes]


def start_streams(stack: ExitStack, server: GatewayProcess, placed: list[Placed],
                  prompt: str) -> list[OpenStream]:
    """Open one stream per placed session and read its first event."""
    streams = []
    for p in placed:
        response = stack.enter_context(p.session.post(
            server.url + "/v1/generate/stream", json=generate_body(prompt), headers=KEY,
            stream=True, timeout=(5, 10)))
        assert response.status_code == 200, response.text
        lines = response.iter_lines(chunk_size=None)
        assert next(lines).startswith(b'data: {"text"')
        streams.append(OpenStream(p.pid, response, lines))
    return streams


def drain(stream: OpenStream, limit_s: float = 15) -> list[bytes]:
    """Read ``stream`` to its end (at most ``limit_s`` seconds); return its non-empty lines."""
    deadline = time.monotonic() + limit_s
    seen = []
    for line in stream.lines:
        assert time.monotonic() < deadline, f"stream still open after {limit_s}s"
        if line:
            seen.append(line)
    return seen


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(module_fake: FakeOllama,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run the module's shared gateway: two workers, residency polled every 0.5 s."""
    folder = tmp_path_factory.mktemp("shared")
    server = start_gateway(gateway_env(module_fake, folder, GATEWAY_POLL_SECONDS="0.5"),
                           folder / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_gateway(gateway_server: Callable[..., GatewayProcess], fake: FakeOllama,
                tmp_path: Path) -> Callable[..., GatewayProcess]:
    """Return a starter of this test's own two-worker gateways (counts start at zero)."""
    return lambda **extra: gateway_server(**gateway_env(fake, tmp_path, **extra))


# --- counts over both workers -----------------------------------------------------------------


def spread_requests(server: GatewayProcess) -> tuple[list[Any], Counter[int]]:
    """Send REQUESTS_SPREAD generates over 4 kept-alive connections, 2 on each worker."""
    per_session = REQUESTS_SPREAD // 4

    def run(p: Placed, first: int) -> list[Any]:
        answers = []
        for i in range(first, first + per_session):
            body = generate_body(" ".join(["w"] * (1 + i % 4)), max_tokens=1 + i % 10)
            with p.session.post(server.url + "/v1/generate", json=body, headers=KEY,
                                timeout=(5, 10)) as response:
                assert response.status_code == 200, response.text
                answers.append((i, response.json()["usage"]))
        return answers

    with sessions_on_each_worker(server, 2) as placed, ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(run, placed, range(0, REQUESTS_SPREAD, per_session)))
        assert still_placed(server, placed), "a connection moved: the spread is not proven"
    by_worker = Counter(p.pid for p in placed for _ in range(per_session))
    return [answer for batch in batches for answer in batch], by_worker


def test_counts_are_exact_over_both_workers(own_gateway: Callable[..., GatewayProcess],
                                            fake: FakeOllama) -> None:
    """40 requests served by both workers: /metrics counts exactly 40 and their tokens."""
    server = own_gateway()
    answers, by_worker = spread_requests(server)
    samples = scrape(server)
    route = {"route": "/v1/generate"}
    prompt = sum(1 + i % 4 for i, _ in answers)
    completion = sum(min(8, 1 + i % 10) for i, _ in answers)
    print(f"\n{REQUESTS_SPREAD} requests by worker {dict(by_worker)}: "
          f"{value(samples, 'gateway_requests_total', **route)} counted, "
          f"prompt tokens {prompt}, completion tokens {completion}")
    assert len(by_worker) == 2 and all(n > 0 for n in by_worker.values()), by_worker
    assert fake.stats["completed"] == REQUESTS_SPREAD, fake.stats
    assert [u["prompt_tokens"] for _, u in answers] == [1 + i % 4 for i, _ in answers]
    assert value(samples, "gateway_requests_total", method="POST", status="200", model=MODEL,
                 **route) == REQUESTS_SPREAD
    assert value(samples, "gateway_requests_total", **route) == REQUESTS_SPREAD
    assert value(samples, "gateway_request_duration_seconds_count", **route) == REQUESTS_SPREAD
    assert value(samples, "gateway_request_duration_seconds_bucket", le="+Inf",
                 **route) == REQUESTS_SPREAD
    tokens = {"model": MODEL, "key": "tester"}
    assert value(samples, "gateway_prompt_tokens_total", **tokens) == prompt
    assert value(samples, "gateway_completion_tokens_total", **tokens) == completion
    assert value(samples, "gateway_upstream_requests_total", backend=fake.url,
                 outcome="ok") == REQUESTS_SPREAD
    assert value(samples, "gateway_output_tokens_per_second_count", model=MODEL) == (
        REQUESTS_SPREAD)


# --- client disconnects -----------------------------------------------------------------------


def disconnect_counted(server: GatewayProcess, backend: str) -> bool:
    """Return whether /metrics shows one client disconnect and one cancelled upstream."""
    samples = scrape(server)
    return (value(samples, "gateway_client_disconnects_total") == 1
            and value(samples, "gateway_upstream_requests_total", backend=backend,
                      outcome="cancelled") == 1)


def test_disconnected_stream_counts_once(own_gateway: Callable[..., GatewayProcess],
                                         fake: FakeOllama) -> None:
    """A client leaving a stream: one disconnect, one cancelled upstream, one access line."""
    server = own_gateway()
    rid = new_id("cut")
    with open_raw_stream(server.url, generate_body(SLOW),
                         {**KEY, "X-Request-ID": rid}) as sock:
        assert read_until(sock, b'data: {"text"').startswith(b"HTTP/1.1 200")
    took = eventually(lambda: disconnect_counted(server, fake.url), 3)
    print(f"\nclient disconnect counted {took if took is None else round(took, 3)}s "
          "after the socket closed")
    assert took is not None, [s for s in scrape(server) if "disconnect" in s.name
                              or "upstream" in s.name]
    assert fake.wait_for("cancelled", 1, timeout=3) and fake.stats["cancelled"] == 1, fake.stats
    time.sleep(0.3)  # a second count, if any, would follow within milliseconds
    assert disconnect_counted(server, fake.url)
    assert fake.stats["completed"] == 0, fake.stats
    [line] = lines_of(server, rid)
    # Whether a left stream logs token counts is checked by the next test.
    assert STREAM_FIELDS - {"prompt_tokens", "completion_tokens"} <= set(line) <= STREAM_FIELDS
    assert (line["status"], line["upstream"], line["client_left"]) == (200, "cancelled", True)
    # Finished when the client left, not when the 8 s generation would have ended.
    assert 1 <= line["pieces"] < 400 and line["duration_ms"] < 3000, line


def test_left_stream_reports_the_pieces_relayed(own_gateway: Callable[..., GatewayProcess],
                                                fake: FakeOllama) -> None:
    """docs/operations.md: a stream cut short counts the pieces relayed; its prompt is unknown."""
    server = own_gateway()
    rid = new_id("left")
    with open_raw_stream(server.url, generate_body(SLOW), {**KEY, "X-Request-ID": rid}) as sock:
        read_until(sock, b'data: {"text"')
    assert eventually(lambda: metric(server, "gateway_client_disconnects_total") == 1, 3)
    completion = metric(server, "gateway_completion_tokens_total", model=MODEL, key="tester")
    [line] = lines_of(server, rid)
    assert line["client_left"] is True and "prompt_tokens" not in line
    assert line["completion_tokens"] == line["pieces"] == completion >= 1


# --- in-flight gauges -------------------------------------------------------------------------


def in_flight(server: GatewayProcess) -> tuple[float, float]:
    """Return (in-flight streams, in-flight requests); the scrape itself is one request."""
    samples = scrape(server)
    return (value(samples, "gateway_in_flight_streams"),
            value(samples, "gateway_in_flight_requests"))


def test_in_flight_streams_sum_over_workers(shared: GatewayProcess, fake: FakeOllama) -> None:
    """10 streams, 5 on each worker: the gauges read 10 (and 11 requests), then 0 and 1."""
    assert eventually(lambda: in_flight(shared) == (0, 1), 3) is not None, in_flight(shared)
    with ExitStack() as stack:
        placed = stack.enter_context(sessions_on_each_worker(shared, OPEN_STREAMS // 2))
        streams = start_streams(stack, shared, placed, MEDIUM)
        during = in_flight(shared)
        ends = [drain(stream)[-1] for stream in streams]
    after_s = eventually(lambda: in_flight(shared) == (0, 1), 3)
    print(f"\n{OPEN_STREAMS} streams on workers {dict(Counter(s.pid for s in streams))}: "
          f"in flight {during}; back to (0, 1) {after_s}s after they ended")
    assert during == (OPEN_STREAMS, OPEN_STREAMS + 1)
    assert all(b'"done":true' in end for end in ends), ends
    assert after_s is not None, in_flight(shared)


def kill_worker(server: GatewayProcess, victim: int) -> float:
    """SIGKILL one of ``server``'s workers; return the seconds until gunicorn replaced it."""
    assert victim in server.worker_pids()  # only a worker of the gunicorn this test started
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        pids = server.worker_pids()
        return victim not in pids and len(pids) == 2

    took = eventually(replaced, 10, 0.02)
    assert took is not None, server.worker_pids()
    return took


def test_killed_worker_leaves_the_in_flight_gauges(own_gateway: Callable[..., GatewayProcess],
                                                   fake: FakeOllama) -> None:
    """SIGKILL a worker holding 2 of 4 streams: the gauges drop to the survivor's 2, then 0."""
    server = own_gateway()
    with ExitStack() as stack:
        placed = stack.enter_context(sessions_on_each_worker(server, 2))
        streams = start_streams(stack, server, placed, MEDIUM)
        before = in_flight(server)
        victim = streams[0].pid
        survivors = [s for s in streams if s.pid != victim]
        replaced_s = kill_worker(server, victim)
        after_kill = in_flight(server)
        ends = [drain(stream)[-1] for stream in survivors]
    back = eventually(lambda: in_flight(server) == (0, 1), 3)
    print(f"\n4 streams on 2 workers {before}; worker killed, replaced in {replaced_s:.3f}s; "
          f"in flight then {after_kill} ({len(survivors)} streams left); (0, 1) after {back} s")
    assert before == (4, 5)
    assert after_kill == (len(survivors), len(survivors) + 1) == (2, 3)
    assert all(b'"done":true' in end for end in ends), ends
    assert back is not None, in_flight(server)
    assert "Traceback" not in server.log(), server.log()[-3000:]


# --- histograms -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "labels", "buckets"), [
    ("gateway_request_duration_seconds", {"route": "/v1/generate/stream"}, DURATION_BUCKETS),
    ("gateway_time_to_first_token_seconds", {"model": MODEL}, TTFT_BUCKETS),
    ("gateway_output_tokens_per_second", {"model": MODEL}, RATE_BUCKETS),
], ids=["duration", "ttft", "token-rate"])
def test_histograms_have_the_documented_buckets(shared: GatewayProcess, fake: FakeOllama,
                                                name: str, labels: dict[str, str],
                                                buckets: tuple[float, ...]) -> None:
    """Each histogram exposes exactly the buckets docs/operations.md lists, plus +Inf."""
    reply = call(shared.url, "/v1/generate/stream", generate_body("hi"), headers=KEY)
    assert reply.status == 200
    samples = [s for s in scrape(shared) if s.name == f"{name}_bucket"
               and all(s.labels.get(k) == v for k, v in labels.items())]
    edges = [float(s.labels["le"]) for s in samples]
    assert edges == [*map(float, buckets), float("inf")], edges
    counts = [s.value for s in samples]
    assert counts == sorted(counts) and counts[-1] >= 1, counts


# --- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "kept"), [
    ("abc123", True), ("A-b_c.d:e", True), ("x" * 128, True),
    ("has space", False), ("x" * 129, False), ("semi;colon", False), ("", False),
    ("caf\u00e9", False),
], ids=["plain", "punctuation", "128-chars", "space", "129-chars", "semicolon", "empty",
        "latin-1"])
def test_request_id_round_trips_to_the_backend(shared: GatewayProcess, fake: FakeOllama,
                                               sent: str, kept: bool) -> None:
    """A well-formed id comes back and reaches the backend; any other is replaced by a new one."""
    reply = call(shared.url, "/v1/generate", generate_body("hi"),
                 headers={**KEY, "X-Request-ID": sent})
    assert reply.status == 200, reply.text
    returned = reply.headers["X-Request-ID"]
    if kept:
        assert returned == sent
    else:
        assert re.fullmatch(f"[0-9a-f]{{{GENERATED}}}", returned), returned
    assert fake.requests_seen[-1]["request_id"] == returned


@pytest.mark.parametrize(("path", "body", "headers", "status"), [
    ("/v1/generate", generate_body("hi"), {}, 401),
    ("/no/such/route", generate_body("hi"), KEY, 404),
    ("/v1/generate", {"model": "no-such-model", "prompt": "hi"}, KEY, 404),
    ("/v1/generate/stream", generate_body("hi"), KEY, 200),
], ids=["401", "404-route", "404-model", "sse-stream"])
@pytest.mark.parametrize("sent", [None, "client-id-42"], ids=["absent", "sent"])
def test_every_response_carries_a_request_id(shared: GatewayProcess, fake: FakeOllama, path: str,
                                             body: dict[str, Any], headers: dict[str, str],
                                             status: int, sent: str | None) -> None:
    """Errors and streams carry X-Request-ID too: the client's, or a new one when it sent none."""
    extra = {"X-Request-ID": sent} if sent else {}
    reply = call(shared.url, path, body, headers={**headers, **extra})
    assert reply.status == status, reply.text
    returned = reply.headers.get("X-Request-ID")
    assert returned == sent if sent else re.fullmatch(f"[0-9a-f]{{{GENERATED}}}", returned or "")
    if status == 200:
        assert reply.data[-1].data["done"] is True
        assert fake.requests_seen[-1]["request_id"] == returned


# --- access log -------------------------------------------------------------------------------

SECRET_PROMPT = "zanzibar marmalade quixotic"  # 3 words; must never reach the log by default


@pytest.mark.parametrize(("path", "body", "headers", "status", "fields"), [
    ("/v1/generate", generate_body(SECRET_PROMPT), KEY, 200, ANSWER_FIELDS),
    ("/v1/generate/stream", generate_body(SECRET_PROMPT), KEY, 200, STREAM_FIELDS),
    ("/v1/chat", {"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}]},
     KEY, 200, ANSWER_FIELDS),
    ("/v1/generate", generate_body(SECRET_PROMPT), {"Authorization": "Bearer gw-wrong"}, 401,
     REFUSED_FIELDS),
    ("/v1/generate", {"model": "no-such-model", "prompt": SECRET_PROMPT}, KEY, 404,
     FAILED_FIELDS),
], ids=["generate", "stream", "chat", "401", "404-model"])
def test_one_access_line_per_request(shared: GatewayProcess, fake: FakeOllama, path: str,
                                     body: dict[str, Any], headers: dict[str, str], status: int,
                                     fields: set[str]) -> None:
    """Exactly one JSON access line per request, with its fields, the key's name and no prompt."""
    rid = new_id("log")
    reply = call(shared.url, path, body, headers={**headers, "X-Request-ID": rid})
    assert reply.status == status, reply.text
    [line] = lines_of(shared, rid)
    assert set(line) == fields, sorted(set(line) ^ fields)
    assert (line["level"], line["method"], line["route"], line["status"]) == (
        "info", "POST", path, status)
    assert line["message"] == f"POST {path} {status}"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    if "key" in fields:
        assert (line["key"], line["backend"]) == ("tester", fake.url)
    if "prompt_tokens" in fields:
        assert (line["prompt_tokens"], line["completion_tokens"], line["upstream"]) == (
            3, 8, "ok")
    if "stream" in fields:
        assert (line["stream"], line["pieces"], line["client_left"]) == (True, 8, False)
    logged = shared.log()
    assert TEST_KEY not in logged and "zanzibar" not in logged


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/no/such/route", 404), ("GET", "/v1/generate", 405), ("POST", "/healthz", 405),
], ids=["404-route", "405-generate", "405-healthz"])
def test_request_outside_every_route_is_logged_and_counted(shared: GatewayProcess,
                                                           fake: FakeOllama, method: str,
                                                           path: str, status: int) -> None:
    """An unknown path or method still gets its access line and count, as route 'unmatched'."""
    labels = {"route": "unmatched", "status": str(status)}
    before = metric(shared, "gateway_requests_total", **labels)
    rid = new_id("unmatched")
    reply = call(shared.url, path, {}, method=method, headers={**KEY, "X-Request-ID": rid})
    assert (reply.status, reply.headers["X-Request-ID"]) == (status, rid), reply.text
    counted = eventually(
        lambda: metric(shared, "gateway_requests_total", **labels) == before + 1, 1)
    logged = [line for line in access_lines(shared) if line.get("request_id") == rid]
    print(f"\n{method} {path} -> {status}: counted {counted is not None}, "
          f"access lines {len(logged)}")
    assert len(logged) == 1, "no access line for a request outside every route"
    assert (logged[0]["route"], logged[0]["status"]) == ("unmatched", status)
    assert counted is not None, [s for s in scrape(shared) if s.name == "gateway_requests_total"]


def test_every_log_line_is_json(shared: GatewayProcess, fake: FakeOllama) -> None:
    """gunicorn's lines and the gateway's are all JSON objects with time, level and logger."""
    assert call(shared.url, "/v1/generate", generate_body("hi"), headers=KEY).status == 200
    lines = [raw for raw in shared.log().splitlines() if raw.strip()]
    parsed = [json.loads(raw) for raw in lines]
    loggers = Counter(line["logger"] for line in parsed)
    print(f"\n{len(lines)} log lines, by logger {dict(loggers)}")
    assert all({"time", "level", "logger", "message"} <= set(line) for line in parsed)
    assert loggers["gunicorn.error"] >= 3, loggers
    assert loggers["flask_inference_gateway.access"] >= 1, loggers


def test_prompts_are_logged_only_when_asked(own_gateway: Callable[..., GatewayProcess],
                                            fake: FakeOllama) -> None:
    """GATEWAY_LOG_PROMPTS=1: the access line holds the prompt and the output."""
    server = own_gateway(GATEWAY_LOG_PROMPTS="1")
    output = "".join(f" tok{i}" for i in range(8))
    for path in ("/v1/generate", "/v1/generate/stream"):
        rid = new_id("prompt")
        reply = call(server.url, path, generate_body(SECRET_PROMPT),
                     headers={**KEY, "X-Request-ID": rid})
        assert reply.status == 200, reply.text
        [line] = lines_of(server, rid)
        assert (line["prompt"], line["output"]) == (SECRET_PROMPT, output), line
    assert TEST_KEY not in server.log()


# --- /metrics token ---------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong-token"}, 401),
    (KEY, 401),
    ({"Authorization": f"Basic {METRICS_TOKEN}"}, 401),
    ({"Authorization": f"Bearer {METRICS_TOKEN}"}, 200),
], ids=["none", "wrong", "api-key", "basic-scheme", "token"])
def test_metrics_token(shared: GatewayProcess, fake: FakeOllama, headers: dict[str, str],
                       status: int) -> None:
    """With GATEWAY_METRICS_TOKEN set, /metrics answers 401 unless it gets that bearer token."""
    reply = call(shared.url, "/metrics", method="GET", headers=headers)
    assert reply.status == status, reply.text
    if status == 200:
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert "gateway_requests_total" in reply.text
    else:
        assert METRICS_TOKEN not in reply.text and "gateway_" not in reply.text


# --- model residency --------------------------------------------------------------------------


def residency(server: GatewayProcess, backend: str) -> tuple[float, float, float]:
    """Return (model loaded, its VRAM bytes, backend up) for sim:latest."""
    samples = scrape(server)
    labels = {"backend": backend, "model": "sim:latest"}
    return (value(samples, "gateway_model_loaded", **labels),
            value(samples, "gateway_model_vram_bytes", **labels),
            value(samples, "gateway_backend_up", backend=backend))


def poller_pid(server: GatewayProcess) -> int | None:
    """Return the worker holding gateway-poller.lock open in 5 looks 20 ms apart, if one does."""
    holders: set[int] | None = None
    for _ in range(5):
        now = set()
        for pid in server.worker_pids():
            with suppress(OSError):  # a worker that just exited
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with suppress(OSError):
                        if os.readlink(fd).endswith("gateway-poller.lock"):
                            now.add(pid)
        holders = now if holders is None else holders & now
        time.sleep(0.02)
    return next(iter(holders)) if holders and len(holders) == 1 else None


def test_residency_survives_the_polling_worker(own_gateway: Callable[..., GatewayProcess],
                                               fake: FakeOllama) -> None:
    """SIGKILL the worker that polls /api/ps: the other takes over and the gauges come back."""
    server = own_gateway(GATEWAY_POLL_SECONDS="0.5")
    try:
        fake.loaded = [dict(LOADED)]
        with sessions_on_each_worker(server, 1):  # each worker starts its poller loop
            pass
        assert eventually(lambda: residency(server, fake.url) == (1, 12345, 1), 3) is not None
        victim = poller_pid(server)
        assert victim is not None, "no single worker holds the poller lock"
        replaced_s = kill_worker(server, victim)
        back_s = eventually(lambda: residency(server, fake.url) == (1, 12345, 1)
                            and poller_pid(server) not in (None, victim), 3)
    finally:
        fake.loaded = []
    print(f"\npolling worker killed, replaced in {replaced_s:.3f}s; gauges back after {back_s}s")
    assert back_s is not None, residency(server, fake.url)


def test_model_residency_follows_api_ps(shared: GatewayProcess, fake: FakeOllama) -> None:
    """/api/ps lists sim:latest: loaded 1 with its VRAM within 3 s; unloaded, 0 and 0."""
    try:
        fake.loaded = [dict(LOADED)]
        loaded_s = eventually(lambda: residency(shared, fake.url) == (1, 12345, 1), 3)
        fake.loaded = []
        unloaded_s = eventually(lambda: residency(shared, fake.url) == (0, 0, 1), 3)
    finally:
        fake.loaded = []
    print(f"\nresidency: loaded seen after {loaded_s}s, unloaded after {unloaded_s}s")
    assert loaded_s is not None, residency(shared, fake.url)
    assert unloaded_s is not None, residency(shared, fake.url)
