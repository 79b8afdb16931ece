"""Real gunicorn + gevent in front of a fake Ollama: streaming, cancellation, concurrency.

Also holds the helpers that test_faults.py shares: the HTTP/SSE client and raw sockets.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import GatewayProcess, start_gateway
from tests.fake_ollama import FakeOllama

SSE_TYPE = "text/event-stream"
JSON_TYPE = "application/json"
MAX_LINES = 20_000
STREAM_ROUTES = ["/v1/generate/stream", "/v1/chat/stream"]
CONCURRENT_STREAMS = 200
CANCELLED_STREAMS = 10


@dataclass
class Event:
    """One SSE event or comment, stamped with seconds since the request was sent."""

    at: float
    name: str  # "message", "error" or "ping" (a ``: ping`` comment)
    data: Any = None


@dataclass
class Reply:
    """A whole HTTP answer: status, headers, raw text and, for SSE, the parsed events."""

    status: int
    headers: Any
    text: str
    elapsed: float
    events: list[Event] = field(default_factory=list)

    @property
    def data(self) -> list[Event]:
        """Return the events that carry data (text, done and error events)."""
        return [e for e in self.events if e.name != "ping"]

    @property
    def texts(self) -> list[str]:
        """Return the text pieces, in order."""
        return [e.data["text"] for e in self.data if e.name == "message" and "text" in e.data]

    @property
    def pings(self) -> list[Event]:
        """Return the ``: ping`` comments."""
        return [e for e in self.events if e.name == "ping"]


def body_for(path: str, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    """Return a generate or chat body (by route) whose prompt is ``prompt``."""
    if "/chat" in path:
        return {"messages": [{"role": "user", "content": prompt}], **extra}
    return {"prompt": prompt, **extra}


def parse_sse(lines: Iterable[bytes], started: float, limit_s: float) -> list[Event]:
    """Parse SSE lines until the stream ends; fail once it outlives ``limit_s``."""
    events: list[Event] = []
    name, data = "message", None
    for count, raw in enumerate(lines):
        at = time.monotonic() - started
        assert at < limit_s and count < MAX_LINES, f"stream open after {at:.1f}s: {events[-3:]}"
        line = raw.decode()
        if line.startswith(":"):
            events.append(Event(at, "ping", line))
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = json.loads(line.partition(":")[2])
        elif not line and data is not None:
            events.append(Event(at, name, data))
            name, data = "message", None
    return events


def call(url: str, path: str, body: Any = None, *, method: str = "POST",
         limit_s: float = 30, **kwargs: Any) -> Reply:
    """Send one request and read the whole answer, parsing it as SSE when it is a stream."""
    started = time.monotonic()
    kwargs.setdefault("json", body)
    with requests.request(method, url + path, stream=True, timeout=(5, limit_s),
                          **kwargs) as response:
        reply = Reply(response.status_code, response.headers, "", 0.0)
        if response.headers.get("Content-Type", "").startswith(SSE_TYPE):
            reply.events = parse_sse(response.iter_lines(chunk_size=None), started, limit_s)
        else:
            reply.text = response.text
    reply.elapsed = time.monotonic() - started
    return reply


def error_of(reply: Reply) -> dict[str, Any]:
    """Return the error object of a JSON error answer, checking its shape."""
    assert reply.headers["Content-Type"].startswith(JSON_TYPE), reply.headers
    assert not reply.text.lstrip().startswith("<"), reply.text
    error = json.loads(reply.text)["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), error
    return error


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 10 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def idle_fake(fake: FakeOllama) -> FakeOllama:
    """Wait for the fake to finish earlier tests' requests, then zero its counters."""
    assert wait_until(lambda: fake.stats["active"] == 0, 5), fake.stats
    fake.reset()
    return fake


def assert_no_traceback(server: GatewayProcess, since: int) -> None:
    """Fail if gunicorn logged a traceback after log offset ``since``."""
    logged = server.log()[since:]
    assert "Traceback" not in logged, logged[-4000:]


def run_gateway(tmp_path_factory: pytest.TempPathFactory, **env: str) -> Iterator[GatewayProcess]:
    """Run one gunicorn gateway for a whole module, then stop it."""
    server = start_gateway(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


def open_raw_stream(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a streaming POST on a raw socket and return the socket, unread."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n")
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes, limit_s: float = 5) -> bytes:
    """Read from ``sock`` until ``marker`` has arrived; return all that was read."""
    deadline = time.monotonic() + limit_s
    seen = b""
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} within {limit_s}s: {seen!r}"
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before {marker!r}: {seen!r}"
        seen += chunk
    return seen


@pytest.fixture(scope="module")
def gateway(module_fake: FakeOllama,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Run one gunicorn worker in front of the module's fake."""
    yield from run_gateway(tmp_path_factory, GATEWAY_OLLAMA_URL=module_fake.url,
                           GATEWAY_READ_TIMEOUT="10")


@pytest.fixture
def fake(module_fake: FakeOllama) -> FakeOllama:
    """Return the module's fake, idle and with zeroed counters."""
    return idle_fake(module_fake)


@pytest.mark.parametrize(("method", "path", "status", "content_type"), [
    ("GET", "/healthz", 200, JSON_TYPE),
    ("GET", "/readyz", 200, JSON_TYPE),
    ("GET", "/v1/models", 200, JSON_TYPE),
    ("GET", "/swagger.json", 200, JSON_TYPE),
    ("GET", "/docs", 200, "text/html"),
], ids=["healthz", "readyz", "models", "swagger", "docs"])
def test_read_only_routes(gateway: GatewayProcess, fake: FakeOllama, method: str, path: str,
                          status: int, content_type: str) -> None:
    """The read-only routes answer through gunicorn with their content type."""
    reply = call(gateway.url, path, method=method)
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"].startswith(content_type)
    if path == "/v1/models":
        ids = [m["id"] for m in json.loads(reply.text)["data"]]
        assert ids == ["llama3.2:latest", "sim:latest"]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat"], ids=["generate", "chat"])
def test_whole_answer(gateway: GatewayProcess, fake: FakeOllama, path: str) -> None:
    """A non-streamed answer has the contract's fields and the whole text."""
    reply = call(gateway.url, path, body_for(path, "[[sim:tokens=4]] hi", max_tokens=10))
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith(JSON_TYPE)
    answer = json.loads(reply.text)
    text = answer.pop("message")["content"] if path == "/v1/chat" else answer.pop("text")
    assert text == " tok0 tok1 tok2 tok3"
    assert set(answer) == {"id", "model", "done_reason", "usage", "created"}
    assert answer["usage"]["completion_tokens"] == 4
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert fake.requests_seen[-1]["stream"] is True  # whole answers are streamed upstream too


@pytest.mark.parametrize("path", STREAM_ROUTES, ids=["generate", "chat"])
def test_stream_relays_each_piece_as_generated(gateway: GatewayProcess, fake: FakeOllama,
                                               path: str) -> None:
    """Pieces reach the client one by one, in order, while the model still generates."""
    reply = call(gateway.url, path, body_for(path, "[[sim:itl=0.2]] [[sim:tokens=5]] hi"))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith(SSE_TYPE)
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in reply.headers
    events = reply.data
    assert [e.data for e in events[:5]] == [{"text": f" tok{i}"} for i in range(5)]
    assert len(events) == 6, events
    done = events[5]
    assert done.name == "message" and done.data["done"] is True, done
    assert done.data["done_reason"] == "stop"
    usage = done.data["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    # The first piece arrives while the other four are still being generated.
    assert events[0].at < 0.6 and reply.elapsed > 0.8, (events[0].at, reply.elapsed)
    assert done.at - events[0].at > 0.6
    assert fake.stats["completed"] == 1


def test_client_disconnect_cancels_upstream(gateway: GatewayProcess, fake: FakeOllama) -> None:
    """Closing the client connections stops every upstream generation promptly."""
    body = body_for("/v1/generate/stream", "[[sim:itl=0.05]] [[sim:tokens=400]] go")
    socks: list[socket.socket] = []
    try:
        for _ in range(CANCELLED_STREAMS):
            socks.append(open_raw_stream(gateway.url, "/v1/generate/stream", body))
        for sock in socks:
            assert read_until(sock, b'data: {"text"').startswith(b"HTTP/1.1 200")
        assert fake.stats["active"] == CANCELLED_STREAMS, fake.stats
    finally:
        closed_at = time.monotonic()
        for sock in socks:
            sock.close()
    assert fake.wait_for("cancelled", CANCELLED_STREAMS, timeout=3), fake.stats
    cancelled_s = time.monotonic() - closed_at
    assert wait_until(lambda: fake.stats["active"] == 0, 3), fake.stats
    idle_s = time.monotonic() - closed_at
    print(f"\n{CANCELLED_STREAMS} client disconnects -> {CANCELLED_STREAMS} upstream cancels "
          f"in {cancelled_s:.3f}s, fake idle after {idle_s:.3f}s")
    assert fake.stats["completed"] == 0
    # The worker is still healthy and serves the next request.
    assert call(gateway.url, "/v1/generate", body_for("/v1/generate")).status == 200


def stream_is_whole(reply: Reply, tokens: int) -> bool:
    """Return whether ``reply`` is a 200 stream of ``tokens`` pieces ending with done."""
    data = reply.data
    return (reply.status == 200 and reply.texts == [f" tok{i}" for i in range(tokens)]
            and len(data) == tokens + 1 and data[-1].name == "message"
            and data[-1].data.get("done") is True
            and data[-1].data["usage"]["completion_tokens"] == tokens)


def test_one_worker_serves_200_concurrent_streams(gateway: GatewayProcess,
                                                  fake: FakeOllama) -> None:
    """One gevent worker relays 200 simultaneous streams to their end."""
    assert len(gateway.worker_pids()) == 1
    log_start = len(gateway.log())
    body = body_for("/v1/generate/stream", "[[sim:tokens=20]] [[sim:itl=0.02]] go")
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT_STREAMS) as pool:
        replies = list(pool.map(lambda _: call(gateway.url, "/v1/generate/stream", body,
                                               limit_s=60), range(CONCURRENT_STREAMS)))
    elapsed = time.monotonic() - started
    print(f"\n{CONCURRENT_STREAMS} concurrent streams x 20 pieces through 1 worker: "
          f"{elapsed:.2f}s (slowest {max(r.elapsed for r in replies):.2f}s)")
    broken = [r for r in replies if not stream_is_whole(r, 20)]
    assert not broken, broken[:3]
    assert fake.stats["completed"] == CONCURRENT_STREAMS, fake.stats
    assert fake.stats["errors"] == 0 and fake.stats["cancelled"] == 0, fake.stats
    assert_no_traceback(gateway, log_start)


def test_client_disconnect_is_not_logged_as_an_error(gateway: GatewayProcess,
                                                     fake: FakeOllama) -> None:
    """A client leaving mid-stream is routine: no traceback, no ERROR line in the log."""
    log_start = len(gateway.log())
    body = body_for("/v1/generate/stream", "[[sim:itl=0.05]] [[sim:tokens=400]] go")
    with open_raw_stream(gateway.url, "/v1/generate/stream", body) as sock:
        read_until(sock, b'data: {"text"')
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats
    time.sleep(0.3)  # a log line, if any, follows the upstream abort within milliseconds
    assert "Error handling request" not in gateway.log()[log_start:]
    assert_no_traceback(gateway, log_start)


def test_idle_connections_are_closed_after_keepalive(gateway: GatewayProcess) -> None:
    """A client that connects and says nothing loses the connection after 5 s."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(16) == b""
        assert 4.5 < time.monotonic() - started < 7
