"""Fair queueing: a light key's wait while another key floods a backend capped at 4.

One simulated backend (scripts/prefix_backend.py, every generation
``--tokens`` × ``--itl`` seconds) behind the gateway under gunicorn + gevent,
GATEWAY_BACKEND_MAX_CONCURRENCY=4. A heavy key keeps ``--flood`` requests in
flight (each sends its next as soon as one ends); a light key sends one
request at a time. The light key's queue wait is its time to first token
less the backend's own (no prefill here: the first token is immediate).

Each store (this worker's memory; Redis, shared by the workers) is run
twice: the light requests under their own key (fair queueing serves the keys
in turn), and under the heavy key (one key's queue is first in, first out:
what a FIFO gateway does to every key).

    python3 scripts/bench_fairness.py --venv .venv [--seconds 20 --out docs/data/fairness.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from bench_prefix import wait_for

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PORT, GATEWAY_PORT, REDIS_PORT = 12201, 12200, 12202
KEYS = {"heavy": "gw-bench-heavy-key", "light": "gw-bench-light-key"}


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process with its output discarded."""
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def start_gateway(venv: Path, redis: bool, workers: int) -> subprocess.Popen[bytes]:
    """Start the gateway in front of the backend, capped at 4, with the two keys."""
    env = {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{GATEWAY_PORT}",
           "GATEWAY_WORKERS": str(workers),
           "GATEWAY_OLLAMA_URL": f"http://127.0.0.1:{BACKEND_PORT}",
           "GATEWAY_BACKEND_MAX_CONCURRENCY": "4", "GATEWAY_QUEUE_SIZE": "1000",
           "GATEWAY_QUEUE_TIMEOUT": "120", "GATEWAY_RATE_LIMIT_DISABLED": "1",
           "GATEWAY_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
           "GATEWAY_API_KEYS_FILE": "", "GATEWAY_LOG_LEVEL": "warning",
           "GATEWAY_DEFAULT_MODEL": "sim",
           "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0" if redis else ""}
    process = start([str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], env)
    wait_for(f"http://127.0.0.1:{GATEWAY_PORT}/readyz")
    return process


def ask(session: requests.Session, key: str) -> tuple[float, float]:
    """Send one streamed chat; return its time to first token, and to its end."""
    started = time.monotonic()
    with session.post(f"http://127.0.0.1:{GATEWAY_PORT}/api/chat", stream=True, timeout=300,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
                      ) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        next(lines)
        first = time.monotonic() - started
        for _ in lines:
            pass
    return first, time.monotonic() - started


def loop(key: str, until: float, waits: list[float]) -> None:
    """Send requests one after another until ``until``; keep each one's time to first token."""
    with requests.Session() as session:
        while time.monotonic() < until:
            waits.append(ask(session, key)[0])


def run(args: argparse.Namespace, redis: bool, fair: bool) -> dict[str, Any]:
    """Flood with the heavy key; measure the light requests' waits."""
    gateway = start_gateway(args.venv, redis, args.workers)
    heavy: list[float] = []
    light: list[float] = []
    try:
        with requests.Session() as session:  # the backend alone: the time one request takes
            solo = [ask(session, KEYS["light"]) for _ in range(5)]
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=loop, args=(KEYS["heavy"], until, heavy))
                   for _ in range(args.flood)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the flood fills the queue first
        loop(KEYS["light" if fair else "heavy"], until, light)
        for thread in threads:
            thread.join()
    finally:
        gateway.terminate()
        gateway.wait(30)
    first = statistics.median(f for f, _ in solo)
    return {"store": "redis" if redis else "memory", "queueing": "fair" if fair else "fifo",
            # one request of the backend's alone, first byte to last: one generation time
            "generation_ms": round(statistics.median(t for _, t in solo) * 1000, 1),
            "light_requests": len(light),
            "heavy_requests": len(heavy),
            # queue wait: time to first token less the backend's own
            **percentiles("light_wait", [w - first for w in light]),
            **percentiles("heavy_wait", [w - first for w in heavy])}


def percentiles(name: str, values: list[float]) -> dict[str, float]:
    """Return the p50 and p99 of ``values`` in milliseconds."""
    ordered = sorted(values) or [0.0]
    return {f"{name}_p50_ms": round(statistics.median(ordered) * 1000, 1),
            f"{name}_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--flood", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--itl", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    backend = start([sys.executable, "scripts/prefix_backend.py", "--port", str(BACKEND_PORT),
                     "--prefill", "0", "--tokens", str(args.tokens), "--itl", str(args.itl)])
    redis = start([shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT),
                   "--save", "", "--appendonly", "no"])
    results = []
    try:
        wait_for(f"http://127.0.0.1:{BACKEND_PORT}/api/version")
        for shared in (False, True):
            for fair in (True, False):
                results.append(run(args, shared, fair))
                print(json.dumps(results[-1]), flush=True)
    finally:
        backend.terminate()
        redis.terminate()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
