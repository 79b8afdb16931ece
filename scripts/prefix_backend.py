"""A simulated GPU backend with a prompt-prefix cache, speaking Ollama's /api/chat.

Time to first token is the prefill of the part of the prompt not in the
backend's cache: ``prefill`` seconds per uncached token, and prefill is
serialised (one GPU computes one prefill at a time, so a busy backend queues).
The cache is vLLM's and llama.cpp's in miniature: the prompt's tokens (here:
words) in blocks of ``BLOCK`` tokens, each block keyed by the hash of
everything up to it, an LRU of ``capacity`` blocks. After the first token,
``tokens`` tokens follow at ``itl`` seconds each, in parallel with other
requests' decoding. ``GET /_sim/stats`` reports requests, the peak in flight,
prompt tokens and how many came from the cache.

    python3 scripts/prefix_backend.py --port 12001 --port 12002 [--prefill 0.0001 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BLOCK = 16


class PrefixCache:
    """An LRU of prompt blocks, each keyed by the hash of the prompt up to its end."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def serve(self, tokens: list[str]) -> int:
        """Return how many leading tokens were cached; cache every whole block of them."""
        digest, cached, hit = hashlib.blake2b(digest_size=16), 0, True
        for start in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
            digest.update(" ".join(tokens[start:start + BLOCK]).encode())
            key = digest.copy().digest()
            if hit and key in self.blocks:
                cached += BLOCK
                self.blocks.move_to_end(key)
                continue
            hit = False
            self.blocks[key] = None
            if len(self.blocks) > self.capacity:
                self.blocks.popitem(last=False)
        return cached


class SimBackend:
    """One simulated GPU: its cache, its prefill queue, its counters."""

    def __init__(self, prefill: float, capacity: int, tokens: int, itl: float) -> None:
        self.prefill, self.tokens, self.itl = prefill, tokens, itl
        self.cache = PrefixCache(capacity)
        self.gpu = threading.Lock()  # one prefill at a time
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "in_flight": 0, "peak_in_flight": 0,
                      "prompt_tokens": 0, "cached_tokens": 0}

    def count(self, key: str, value: int) -> None:
        """Add to a counter (and follow the peak in flight)."""
        with self.lock:
            self.stats[key] += value
            self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"],
                                               self.stats["in_flight"])

    def prefill_for(self, tokens: list[str]) -> int:
        """Compute the prompt's prefill (queued behind others); return its cached tokens."""
        with self.gpu:
            cached = self.cache.serve(tokens)
            time.sleep((len(tokens) - cached) * self.prefill)
        return cached


def prompt_tokens(body: dict[str, Any]) -> list[str]:
    """Return the prompt as the model sees it, one token per word."""
    text = " ".join(f"<{m.get('role')}> {m.get('content', '')}" for m in body.get("messages", []))
    return text.split()


class Handler(BaseHTTPRequestHandler):
    """Serve /api/chat (streamed), /api/tags, /api/ps, /api/version, /_sim/stats."""

    protocol_version = "HTTP/1.1"
    sim: SimBackend

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log nothing: the benchmark reads the stats."""

    def send_json(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        """Answer the gateway's probes and the stats."""
        model = {"name": "sim:latest", "model": "sim:latest", "size": 1, "digest": "0" * 64,
                 "modified_at": "2026-01-01T00:00:00Z", "details": {}}
        answers = {"/api/tags": {"models": [model]}, "/api/ps": {"models": [model]},
                   "/api/version": {"version": "0.24.0"}, "/_sim/stats": self.sim.stats}
        self.send_json(answers.get(self.path.split("?")[0], {}))

    def do_POST(self) -> None:  # noqa: N802
        """Stream one chat answer: the prefill, then the tokens."""
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        tokens = prompt_tokens(body)
        sim = self.sim
        sim.count("requests", 1)
        sim.count("in_flight", 1)
        try:
            cached = sim.prefill_for(tokens)
            sim.count("prompt_tokens", len(tokens))
            sim.count("cached_tokens", cached)
            self.stream(body.get("model", "sim"), len(tokens))
        finally:
            sim.count("in_flight", -1)

    def stream(self, model: str, prompt: int) -> None:
        """Write the answer's NDJSON lines, one HTTP chunk each."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(self.sim.tokens):
            if i:
                time.sleep(self.sim.itl)
            self.chunk({"model": model, "message": {"role": "assistant", "content": f" w{i}"},
                        "done": False})
        self.chunk({"model": model, "message": {"role": "assistant", "content": ""},
                    "done": True, "done_reason": "stop", "prompt_eval_count": prompt,
                    "eval_count": self.sim.tokens})
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, line: dict[str, Any]) -> None:
        data = json.dumps(line).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def serve(port: int, sim: SimBackend) -> ThreadingHTTPServer:
    """Start a simulated backend on 127.0.0.1:``port`` in a background thread."""
    handler = type("BoundHandler", (Handler,), {"sim": sim})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    # A gateway stopped between runs resets its pooled connections: nothing to report.
    server.handle_error = lambda *_args: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, action="append", required=True,
                        help="one backend per --port")
    parser.add_argument("--prefill", type=float, default=0.0001, help="seconds per token")
    parser.add_argument("--capacity", type=int, default=4000, help="cached blocks")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--itl", type=float, default=0.01)
    args = parser.parse_args()
    for port in args.port:
        serve(port, SimBackend(args.prefill, args.capacity, args.tokens, args.itl))
    print("serving", " ".join(map(str, args.port)), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
