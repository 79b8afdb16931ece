"""Measure how throughput scales with GPU backends: 1 vs 2 simulated backends behind the gateway.

Each simulated backend (../shared/bench/simbackend) stands for one GPU that
runs at most GATEWAY_BACKEND_MAX_CONCURRENCY generations at once (Ollama's
OLLAMA_NUM_PARALLEL); the gateway's admission control enforces that cap, so
the backends are the bottleneck. The same closed-loop load
(../shared/bench/loadgen) runs against 1 and then 2 backends.

    python3 scripts/bench_scaleout.py --venv .venv [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("GATEWAY_BENCH_DIR", ROOT.parent / "shared" / "bench"))
BIN = Path("/tmp/gateway-bench-bin")
GATEWAY_PORT, FIRST_BACKEND_PORT = 8090, 11434
BODY = json.dumps({"model": "sim", "prompt": "Hello", "max_tokens": 256})


def build_tools() -> None:
    """Build simbackend and loadgen with Go, once."""
    BIN.mkdir(exist_ok=True)
    for tool in ("simbackend", "loadgen"):
        if not (BIN / tool).exists():
            subprocess.run(["go", "build", "-o", str(BIN / tool), "."], cwd=BENCH / tool,
                           check=True)


def wait_port(port: int, timeout: float = 30) -> None:
    """Wait until something listens on the loopback ``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group, quietly."""
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process group started by ``start``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def completed(port: int) -> int:
    """Return how many generations a simulated backend completed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=2) as reply:
        return int(json.load(reply)["completed"])


def run(backends: int, args: argparse.Namespace) -> dict[str, object]:
    """Run the load against ``backends`` simulated GPUs; return loadgen's figures."""
    ports = [FIRST_BACKEND_PORT + i for i in range(backends)]
    sims = [start([str(BIN / "simbackend"), "-addr", f"127.0.0.1:{port}", "-tokens",
                   str(args.tokens), "-itl", args.itl]) for port in ports]
    for port in ports:
        wait_port(port)
    gateway = start([str(Path(args.venv).resolve() / "bin" / "gunicorn"), "-c",
                     "gunicorn.conf.py", "wsgi:app"], {
        "GATEWAY_OLLAMA_URL": ",".join(f"http://127.0.0.1:{p}" for p in ports),
        "GATEWAY_BIND": f"127.0.0.1:{GATEWAY_PORT}", "GATEWAY_AUTH_DISABLED": "1",
        "GATEWAY_RATE_LIMIT_DISABLED": "1", "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_WORKERS": "2", "GATEWAY_BACKEND_MAX_CONCURRENCY": str(args.parallel),
        "GATEWAY_QUEUE_SIZE": "10000", "GATEWAY_QUEUE_TIMEOUT": "120"})
    try:
        wait_port(GATEWAY_PORT)
        time.sleep(1.0)
        load = [str(BIN / "loadgen"), "-url", f"http://127.0.0.1:{GATEWAY_PORT}/v1/generate/stream",
                "-body", BODY, "-c", str(args.clients), "-timeout", "120s"]
        subprocess.run(load + ["-n", str(args.clients)], capture_output=True, check=True)
        out = subprocess.run(load + ["-n", "0", "-d", f"{args.seconds}s"], capture_output=True,
                             text=True, check=True).stdout
        result = json.loads(out)
        result["per_backend"] = [completed(port) for port in ports]
        return result
    finally:
        stop(gateway)
        for sim in sims:
            stop(sim)


def main() -> None:
    """Run 1 and 2 backends and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8,
                        help="generations each backend runs at once")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--itl", default="10ms")
    parser.add_argument("--out", default="/tmp/gateway-scaleout.json")
    args = parser.parse_args()
    build_tools()
    results = {n: run(n, args) for n in (1, 2)}
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{args.clients} clients, streams of {args.tokens} tokens at {args.itl}, "
          f"{args.parallel} generations per backend at once, {args.seconds:g} s")
    print("| backends | rps | TTFT p50 ms | TTFT p99 ms | errors | completed per backend |")
    print("|---:|---:|---:|---:|---:|---|")
    for n, r in results.items():
        errors = sum(r["errors"].values())  # type: ignore[union-attr]
        print(f"| {n} | {r['rps']:.1f} | {r['ttft_ms']['p50']:.1f} | "  # type: ignore[index]
              f"{r['ttft_ms']['p99']:.1f} | {errors} | {r['per_backend']} |")  # type: ignore[index]
    ratio = results[2]["rps"] / results[1]["rps"]  # type: ignore[operator]
    print(f"scaling: {ratio:.2f} x")
    sys.exit(0 if ratio >= 1.8 else 1)


if __name__ == "__main__":
    main()
