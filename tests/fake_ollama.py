"""Fake Ollama HTTP server speaking the real wire format, with fault injection.

Fault directives are read from the prompt, system prompt or any message content, using the
same ``[[sim:key=value]]`` syntax as the shared Go simbackend: ``status=N``, ``die-after=N``,
``error-after=N``, ``hang``, ``delay=S``, ``ttft=S``, ``tokens=N``, ``itl=S``. What a real
model does on its own is asked for the same way: ``think`` (two pieces of thinking before
the text) and ``tool=NAME`` (a call of NAME with ``TOOL_ARGUMENTS`` after the text);
``"logprobs": true`` in the body adds each token's log probability, and a body asking for
JSON (``format``, ``response_format``) is answered with ``JSON_PIECES``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import select
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIRECTIVE_RE = re.compile(r"\[\[sim:([a-z-]+)(?:=([^\]]*))?\]\]")
VERSION = "0.12.0"
POLL_S = 0.05
JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
BUSY_MSG = "server busy, please try again.  maximum pending requests exceeded"
MODEL_ERROR_MSG = "an error was encountered while running the model: simulated"
STATUS_MESSAGES = {
    500: MODEL_ERROR_MSG,
    503: BUSY_MSG,
}
STAT_KEYS = ("requests", "completed", "cancelled", "active", "errors", "peak")
THOUGHTS = ["Let me think.", " Done thinking."]
TOOL_ARGUMENTS = {"city": "Paris"}
TOOL_CALL_ID = "call_fake0"
JSON_PIECES = ('{"city":', ' "Par', 'is"}')  # the answer when the body asks for JSON


class BadRequest(Exception):
    """Carry an HTTP status and an Ollama error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """Describe one validated generate/chat request and its injected faults."""

    kind: str
    model: str
    stream: bool
    pieces: list[str]
    done_reason: str
    prompt_words: int
    delay: float = 0.0
    ttft: float = 0.0
    itl: float = 0.0
    hang: bool = False
    status: int | None = None
    die_after: int | None = None
    error_after: int | None = None
    thoughts: list[str] = field(default_factory=list)
    tool: str | None = None
    logprobs: bool = False
    started: float = field(default_factory=time.monotonic)


def now_rfc3339() -> str:
    """Return the current UTC time in Go's RFC 3339 nano format."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def dumps(obj: Any) -> bytes:
    """Encode JSON compactly, as Go's encoder does."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_directives(text: str) -> dict[str, str]:
    """Return the ``[[sim:...]]`` directives found in text; later ones win."""
    return {m.group(1): m.group(2) or "" for m in DIRECTIVE_RE.finditer(text)}


def go_json_error(raw: bytes) -> str:
    """Mimic the message Go's encoding/json gives for malformed input."""
    text = raw.decode("utf-8", "replace").lstrip()
    if not text:
        return "unexpected end of JSON input"
    return f"invalid character '{text[0]}' looking for beginning of value"


def model_entry(name: str) -> dict[str, Any]:
    """Build the /api/tags entry for a served model."""
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00.000000000Z",
        "size": 2019393189,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


class FakeOllama:
    """Serve a fake Ollama API in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: tuple[str, ...] | list[str] = ("llama3.2:latest", "sim:latest"),
        tokens: int = 8,
        itl: float = 0.0,
        ttft: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.models = list(models)
        self.tokens = tokens
        self.itl = itl
        self.ttft = ttft
        self.loaded: list[dict[str, Any]] = []
        self.fail_status: int | None = None  # answer every generation with it (503: busy)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._seen: list[dict[str, Any]] = []
        self._streams: list[bytearray] = []  # the payload of each stream sent
        self._conns: set[socket.socket] = set()
        self.connections_accepted = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        """Return the request handler speaking this fake's wire format."""
        return _Handler

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeOllama:
        """Bind and serve in a daemon thread."""
        self.stopping.clear()
        self._server = _Server((self.host, self.port), self.handler_class(), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fake-ollama-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection so handler threads exit."""
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def serve_forever(self) -> None:
        """Block the calling thread until interrupted, starting the server if needed."""
        if self._server is None:
            self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    @property
    def url(self) -> str:
        """Return the base URL clients should use."""
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        """Return a snapshot of the counters."""
        with self._lock:
            return dict(self._stats)

    @property
    def requests_seen(self) -> list[dict[str, Any]]:
        """Return the generate/chat bodies received so far, oldest first."""
        with self._lock:
            return [dict(body) for body in self._seen]

    @property
    def streams_sent(self) -> list[bytes]:
        """Return the payload bytes of each stream sent so far (unchunked), oldest first."""
        with self._lock:
            return [bytes(sent) for sent in self._streams]

    def new_stream(self) -> bytearray:
        """Return the buffer that keeps what one stream sends."""
        with self._lock:
            self._streams.append(bytearray())
            return self._streams[-1]

    def reset(self) -> None:
        """Zero the counters (except active) and forget the bodies seen."""
        with self._lock:
            active = self._stats["active"]
            self._stats = dict.fromkeys(STAT_KEYS, 0)
            self._stats["active"] = active
            self._seen.clear()
            self._streams.clear()

    def wait_for(self, key: str, value: int, timeout: float = 5.0) -> bool:
        """Poll until stats[key] >= value; return whether it got there in time."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stats[key] >= value:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def resolve(self, name: str) -> str | None:
        """Return the served model name matching name, or None."""
        for served in self.models:
            if name == served or f"{name}:latest" == served:
                return served
        return None

    def record(self, path: str, body: dict[str, Any], request_id: str | None = None) -> None:
        """Remember a received request body, with its path and X-Request-ID header."""
        with self._lock:
            self._seen.append({**body, "path": path, "request_id": request_id})

    def begin(self) -> None:
        """Count a validated request as started."""
        with self._lock:
            self._stats["requests"] += 1
            self._stats["active"] += 1
            self._stats["peak"] = max(self._stats["peak"], self._stats["active"])

    def end(self, outcome: str) -> None:
        """Count a request as finished with outcome completed, cancelled or errors."""
        with self._lock:
            self._stats["active"] -= 1
            self._stats[outcome] += 1

    def track(self, conn: socket.socket, add: bool) -> None:
        """Add or remove a live client connection."""
        with self._lock:
            if add:
                self._conns.add(conn)
                self.connections_accepted += 1
            else:
                self._conns.discard(conn)


class _Server(ThreadingHTTPServer):
    """Serve each connection in a daemon thread with a deep accept backlog."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], handler: type, fake: FakeOllama) -> None:
        self.fake = fake
        super().__init__(addr, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup, which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Swallow per-request errors; clients vanishing is routine here."""


def build_job(fake: FakeOllama, kind: str, body: Any) -> Job:
    """Validate a generate/chat body and turn it into a Job."""
    if not isinstance(body, dict):
        raise BadRequest(400, f"json: cannot unmarshal {type(body).__name__} into Go value")
    model = body.get("model")
    if not model or not isinstance(model, str):
        raise BadRequest(400, "model is required")
    if fake.resolve(model) is None:
        raise BadRequest(404, f'model "{model}" not found, try pulling it first')
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest(400, "json: cannot unmarshal options into Go value of type map")
    text = request_text(kind, body)
    sim = parse_directives(text)
    job = Job(
        kind=kind, model=model, stream=body.get("stream") is not False,
        pieces=[], done_reason="stop", prompt_words=max(1, len(text.split())),
        itl=fake.itl, ttft=fake.ttft,
    )
    apply_directives(job, sim)
    job.thoughts = list(THOUGHTS) if "think" in sim else []
    job.tool, job.logprobs = sim.get("tool") or None, body.get("logprobs") is True
    count = int(sim.get("tokens") or fake.tokens)
    job.pieces, job.done_reason = make_pieces(count, options)
    if wants_json(body):  # as a grammar-constrained model answers
        job.pieces = list(JSON_PIECES)
    return job


def wants_json(body: dict[str, Any]) -> bool:
    """Return whether the body asks for JSON (Ollama's format, OpenAI's response_format)."""
    response_format = body.get("response_format")
    return bool(body.get("format")) or (isinstance(response_format, dict) and
                                        response_format.get("type") != "text")


def request_text(kind: str, body: dict[str, Any]) -> str:
    """Concatenate every prompt-like string of a request."""
    if kind == "chat":
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise BadRequest(400, "json: cannot unmarshal messages into Go value of type []")
        parts = [str(m.get("content") or "") for m in messages if isinstance(m, dict)]
    else:
        parts = [str(body.get("system") or ""), str(body.get("prompt") or "")]
    return " ".join(p for p in parts if p)


def apply_directives(job: Job, sim: dict[str, str]) -> None:
    """Copy fault directives onto the job."""
    try:
        job.delay = float(sim.get("delay") or 0)
        job.ttft = float(sim.get("ttft") or job.ttft)
        job.itl = float(sim.get("itl") or job.itl)
        job.hang = "hang" in sim
        job.status = int(sim["status"]) if "status" in sim else None
        job.die_after = int(sim["die-after"]) if "die-after" in sim else None
        job.error_after = int(sim["error-after"]) if "error-after" in sim else None
    except ValueError as exc:
        raise BadRequest(400, f"invalid sim directive: {exc}") from exc


def make_pieces(count: int, options: dict[str, Any]) -> tuple[list[str], str]:
    """Generate the token pieces and the done_reason for a request."""
    reason = "stop"
    try:
        num_predict = int(options.get("num_predict") or 0)
    except (TypeError, ValueError):
        num_predict = 0
    if 0 < num_predict < count:
        count, reason = num_predict, "length"
    pieces = [f" tok{i}" for i in range(count)]
    stops = options.get("stop") or []
    stops = [stops] if isinstance(stops, str) else [s for s in stops if s]
    for i, piece in enumerate(pieces):
        if any(s in piece for s in stops):
            return pieces[:i], "stop"
    return pieces, reason


def logprob(piece: str) -> dict[str, Any]:
    """Return a token's log probability entry, as Ollama and OpenAI write it."""
    return {"token": piece, "logprob": -0.5, "bytes": list(piece.encode()), "top_logprobs": []}


def chunk_line(job: Job, piece: str, thinking: str = "",
               calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build one streamed (not final) line."""
    line: dict[str, Any] = {"model": job.model, "created_at": now_rfc3339()}
    if job.kind == "chat":
        line["message"] = {"role": "assistant", "content": piece}
        if thinking:
            line["message"]["thinking"] = thinking
        if calls:
            line["message"]["tool_calls"] = calls
    else:
        line["response"] = piece
        if thinking:
            line["thinking"] = thinking
    if job.logprobs and piece:
        line["logprobs"] = [logprob(piece)]
    line["done"] = False
    return line


def ollama_calls(job: Job) -> list[dict[str, Any]]:
    """Return the job's tool call as Ollama writes it."""
    return [{"id": TOOL_CALL_ID, "function": {"index": 0, "name": job.tool,
                                             "arguments": TOOL_ARGUMENTS}}]


def final_line(job: Job, text: str) -> dict[str, Any]:
    """Build the final line (or the whole non-streamed body)."""
    line = chunk_line(job, text)
    total = max(1, int((time.monotonic() - job.started) * 1e9))
    line.update(
        done=True, done_reason=job.done_reason, total_duration=total,
        load_duration=min(total, 1_000_000), prompt_eval_count=job.prompt_words,
        prompt_eval_duration=min(total, 2_000_000), eval_count=len(job.pieces),
        eval_duration=max(1, int(job.itl * 1e9 * len(job.pieces))),
    )
    if job.kind == "generate":
        line["context"] = [1, 2, 3]
    return line


def embed_inputs(fake: FakeOllama, body: Any) -> tuple[list[str], str]:
    """Return an embedding request's inputs (a string or a list) and its model."""
    if not isinstance(body, dict) or not body.get("model"):
        raise BadRequest(400, "model is required")
    if fake.resolve(body["model"]) is None:
        raise BadRequest(404, f'model "{body["model"]}" not found, try pulling it first')
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise BadRequest(400, "invalid input type")
    return inputs, body["model"]


PULL_PROGRESS = ({"status": "pulling manifest"},
                 {"status": "downloading", "digest": "sha256:0", "total": 100, "completed": 50},
                 {"status": "downloading", "digest": "sha256:0", "total": 100, "completed": 100},
                 {"status": "success"})


def show_body(name: str) -> dict[str, Any]:
    """Return /api/show's answer for a served model."""
    return {"modelfile": f"FROM {name}", "parameters": "stop <|eot_id|>",
            "template": "{{ .Prompt }}", "details": model_entry(name)["details"],
            "model_info": {"general.architecture": "llama"}, "capabilities": ["completion"],
            "modified_at": "2025-01-01T00:00:00Z"}


def manage_models(fake: FakeOllama, path: str, body: Any) -> dict[str, Any] | None:
    """Apply show, pull, copy or delete to the fake's models; return the JSON answer."""
    if not isinstance(body, dict):
        raise BadRequest(400, "invalid request body")
    name = body.get("source") if path == "/api/copy" else body.get("model") or body.get("name")
    if not name:
        raise BadRequest(400, "model is required")
    served = fake.resolve(name)
    if path == "/api/pull":
        if served is None:
            fake.models.append(name if ":" in name else f"{name}:latest")
        return {"status": "success"}
    if served is None:
        raise BadRequest(404, f"model '{name}' not found")
    if path == "/api/delete":
        fake.models.remove(served)
    elif path == "/api/copy":
        fake.models.append(body.get("destination") or "")
    return show_body(served) if path == "/api/show" else None


def vector(text: str, size: int = 8) -> list[float]:
    """Return a deterministic unit-ish vector for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 4) for b in digest[:size]]


class _Handler(BaseHTTPRequestHandler):
    """Handle one client connection (possibly many keep-alive requests)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        """Name the server in the Server header."""
        return "fake-ollama"

    def setup(self) -> None:
        """Register the connection so stop() can drop it."""
        super().setup()
        # Go servers (real Ollama) disable Nagle: each NDJSON line leaves at once.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake.track(self.connection, add=True)

    def finish(self) -> None:
        """Unregister the connection and close its files, ignoring dead sockets."""
        self.server.fake.track(self.connection, add=False)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        """Serve keep-alive requests until the client leaves or the socket breaks."""
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read stderr."""

    @property
    def fake(self) -> FakeOllama:
        """Return the FakeOllama that owns this server."""
        return self.server.fake

    def do_HEAD(self) -> None:  # noqa: N802
        """Answer HEAD / and HEAD /api/version like Ollama."""
        if self.path in ("/", "/api/version"):
            self._send(200, b"", "text/plain; charset=utf-8")
        else:
            self._send(404, b"", "text/plain; charset=utf-8")

    def do_GET(self) -> None:  # noqa: N802
        """Serve the read-only endpoints."""
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self._send_json(200, {"version": VERSION})
        elif path == "/api/tags":
            self._send_json(200, {"models": [model_entry(m) for m in self.fake.models]})
        elif path == "/api/ps":
            self._send_json(200, {"models": list(self.fake.loaded)})
        elif path == "/_fake/stats":
            self._send_json(200, self.fake.stats)
        else:
            self._send_error(404, "404 page not found")

    def do_POST(self) -> None:  # noqa: N802
        """Serve generate, chat and the fake's control endpoints."""
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if path == "/_fake/reset":
            self.fake.reset()
            self._send_json(200, {"status": "ok"})
        elif path in ("/api/generate", "/api/chat"):
            self._inference(path, path.rsplit("/", 1)[1], raw)
        elif path == "/api/embed":
            self._embed(raw)
        elif path in ("/api/show", "/api/pull", "/api/copy"):
            self._manage(path, raw)
        else:
            self._send_error(404, "404 page not found")

    def do_DELETE(self) -> None:  # noqa: N802
        """Serve /api/delete."""
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if path == "/api/delete":
            self._manage(path, raw)
        else:
            self._send_error(404, "404 page not found")

    def _manage(self, path: str, raw: bytes) -> None:
        """Answer show, pull, copy and delete on the fake's model list."""
        try:
            body = json.loads(raw)
            answer = manage_models(self.fake, path, body)
        except (ValueError, BadRequest) as exc:
            status = exc.status if isinstance(exc, BadRequest) else 400
            self._send_error(status, getattr(exc, "message", str(exc)))
            return
        self.fake.record(path, body, self.headers.get("X-Request-ID"))
        if path == "/api/pull" and body.get("stream") is not False:
            self._start_stream()
            for line in PULL_PROGRESS:
                self._write_chunk(dumps(line) + b"\n")
            self._write_chunk(b"")
        elif answer is None:
            self._send(200, b"", JSON_TYPE)
        else:
            self._send_json(200, answer)

    def _embed(self, raw: bytes) -> None:
        """Answer /api/embed with a small deterministic vector per input."""
        try:
            body = json.loads(raw)
            inputs, model = embed_inputs(self.fake, body)
        except (ValueError, BadRequest) as exc:
            status = exc.status if isinstance(exc, BadRequest) else 400
            self._send_error(status, getattr(exc, "message", str(exc)))
            return
        self.fake.record("/api/embed", body, self.headers.get("X-Request-ID"))
        self._send_json(200, {"model": model, "embeddings": [vector(t) for t in inputs],
                              "prompt_eval_count": sum(len(t.split()) for t in inputs)})

    def _read_body(self) -> bytes:
        """Read a Content-Length or chunked request body."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _inference(self, path: str, kind: str, raw: bytes) -> None:
        """Validate an inference request, then run it and count its outcome."""
        if not raw.strip():
            self._send_error(400, "missing request body")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_error(400, go_json_error(raw))
            return
        if isinstance(body, dict):
            self.fake.record(path, body, self.headers.get("X-Request-ID"))
        try:
            job = build_job(self.fake, kind, body)
        except BadRequest as exc:
            self._send_error(exc.status, exc.message)
            return
        self.fake.begin()
        self._outcome: str | None = None
        try:
            self._run(job)
        except OSError:
            self.close_connection = True
        finally:
            if self._outcome is None:
                self._settle("cancelled")
            if self._outcome == "cancelled":
                self.close_connection = True

    def _settle(self, outcome: str) -> None:
        """Count the request's outcome once (completed, cancelled or errors)."""
        # Called before the last bytes go out, so a client that has read the whole
        # response can assert on stats without racing the handler thread.
        if self._outcome is None:
            self._outcome = outcome
            self.fake.end(outcome)

    def _run(self, job: Job) -> None:
        """Apply pre-response faults, then answer."""
        if not self._wait_alive(job.delay):
            return
        status = job.status if job.status is not None else self.fake.fail_status
        if status is not None:
            message = STATUS_MESSAGES.get(status, f"simulated status {status}")
            self._settle("errors")
            self._send_error(status, message)
        elif job.hang:
            if job.stream:
                self._start_stream()
            self._wait_alive(math.inf)
        elif not self._wait_alive(job.ttft):
            return
        elif job.stream:
            self._stream(job)
        else:
            self._reply(job)

    def _reply(self, job: Job) -> None:
        """Answer a non-streaming request with a single JSON body."""
        if job.die_after is not None:
            self._settle("errors")
            self._abort()
            return
        if job.error_after is not None:
            self._settle("errors")
            self._send_error(500, MODEL_ERROR_MSG)
            return
        for i in range(len(job.pieces)):
            if i and not self._wait_alive(job.itl):
                return
        body = self._whole_body(job)
        self._settle("completed")
        self._send(200, body, JSON_TYPE)

    def _whole_body(self, job: Job) -> bytes:
        """Return the body of a whole (non-streamed) answer."""
        line = final_line(job, "".join(job.pieces))
        key = "message" if job.kind == "chat" else None
        target = line[key] if key else line
        if job.thoughts:
            target["thinking"] = "".join(job.thoughts)
        if job.tool and key:
            target["tool_calls"] = ollama_calls(job)
        if job.logprobs:
            line["logprobs"] = [logprob(p) for p in job.pieces]
        return dumps(line)

    def _extra_bytes(self, job: Job, before: bool) -> bytes:
        """Return the thinking that leads a stream, or the tool call that ends it."""
        if before:
            return b"".join(dumps(chunk_line(job, "", thinking=t)) + b"\n" for t in job.thoughts)
        if job.tool and job.kind == "chat":
            return dumps(chunk_line(job, "", calls=ollama_calls(job))) + b"\n"
        return b""

    def _piece_bytes(self, job: Job, piece: str) -> bytes:
        """Return one streamed piece on the wire."""
        return dumps(chunk_line(job, piece)) + b"\n"

    def _final_bytes(self, job: Job) -> bytes:
        """Return the end of a stream on the wire."""
        return dumps(final_line(job, "")) + b"\n"

    def _error_bytes(self) -> bytes:
        """Return a mid-stream error on the wire."""
        return dumps({"error": MODEL_ERROR_MSG}) + b"\n"

    def _stream(self, job: Job) -> None:
        """Stream pieces as NDJSON chunks, injecting mid-stream faults."""
        self._start_stream()
        if job.thoughts:
            self._write_chunk(self._extra_bytes(job, before=True))
        for i in range(len(job.pieces) + 1):
            if job.die_after == i:
                self._settle("errors")
                self._abort()
                return
            if job.error_after == i:
                self._settle("errors")
                self._write_chunk(self._error_bytes())
                self._write_chunk(b"")
                return
            if i == len(job.pieces):
                if job.tool:
                    self._write_chunk(self._extra_bytes(job, before=False))
                break
            if i and not self._wait_alive(job.itl):
                return
            self._write_chunk(self._piece_bytes(job, job.pieces[i]))
        if self._wait_alive(0):
            final = self._final_bytes(job)
            self._settle("completed")
            self._write_chunk(final)
            self._write_chunk(b"")

    stream_type = NDJSON_TYPE

    _sent: bytearray | None = None  # what this request's stream sent, kept by the fake

    def _start_stream(self) -> None:
        """Send the headers of a chunked streamed response."""
        self._sent = self.fake.new_stream()
        self.send_response(200)
        self.send_header("Content-Type", self.stream_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        """Write one HTTP chunk in a single send; empty data ends the body."""
        if self._sent is not None:  # kept before it goes: a client never reads ahead of it
            self._sent += data
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        """Send a complete response with Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        """Send a JSON response."""
        self._send(status, dumps(obj), JSON_TYPE)

    def _send_error(self, status: int, message: str) -> None:
        """Send an Ollama-style JSON error."""
        self._send_json(status, {"error": message})

    def _abort(self) -> None:
        """Drop the connection with a TCP reset, mid-response."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket only really closes once the makefile() reader is gone too.
        self.rfile.close()
        self.connection.close()

    def _wait_alive(self, seconds: float) -> bool:
        """Wait up to seconds; return False as soon as the client leaves or we stop."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            step = max(0.0, min(remaining, POLL_S))
            if self._client_gone(step) or self.fake.stopping.is_set():
                return False
            if remaining <= POLL_S:
                return True

    def _client_gone(self, timeout: float) -> bool:
        """Return whether the peer closed or reset, waiting up to timeout for news."""
        # poll() rather than select(): select() fails on descriptors >= 1024.
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLRDHUP)
        if not poller.poll(timeout * 1000):
            return False
        try:
            peek = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if peek:
            # Pipelined bytes make the socket readable forever; wait instead of spinning.
            time.sleep(timeout)
            return False
        return True


def main(argv: list[str] | None = None) -> None:
    """Run a fake Ollama server until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--itl", type=float, default=0.0)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--models", default="llama3.2:latest,sim:latest")
    args = parser.parse_args(argv)
    fake = FakeOllama(
        host=args.host, port=args.port, models=tuple(args.models.split(",")),
        tokens=args.tokens, itl=args.itl, ttft=args.ttft,
    )
    fake.start()
    # Printed so a parent process that passed --port 0 can learn the address.
    print(f"fake ollama listening on {fake.url}", flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
