"""Prefix routing against least-busy and round-robin, on simulated GPUs with prefix caches.

Four simulated backends (scripts/prefix_backend.py: time to first token is the
prefill of the prompt's uncached part, prefill serialised per GPU, an LRU
prefix cache of bounded size) behind the gateway under gunicorn + gevent. Two
workloads, each run once per routing setting, the backends restarted (caches
empty) each time:

* ``multi-turn``: 200 concurrent sessions of 8 turns, a shared system prompt,
  each turn resending the conversation plus a new question;
* ``no-shared-prefix``: 200 concurrent clients sending distinct one-turn
  prompts as long as an average multi-turn prompt (``--flat-turns`` each).

    python3 scripts/bench_prefix.py --venv .venv [--sessions 200 --turns 8 --prefill 0.0005]
        [--out docs/data/prefix.json --plot docs/images/prefix.png]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PORTS = (12101, 12102, 12103, 12104)
GATEWAY_PORT = 12100
ROUTINGS = ("least-busy", "prefix", "round-robin")
WORDS = [f"w{i}" for i in range(5000)]
SYSTEM = " ".join(random.Random(0).choices(WORDS, k=300))  # the prompt every session shares


def wait_for(url: str, seconds: float = 30) -> None:
    """Wait until ``url`` answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {seconds:g} s")


def start_backends(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Start the four simulated backends in one process, caches empty."""
    ports = [arg for port in BACKEND_PORTS for arg in ("--port", str(port))]
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "prefix_backend.py"),
                                *ports, "--prefill", str(args.prefill), "--capacity",
                                str(args.capacity), "--itl", str(args.itl)])
    for port in BACKEND_PORTS:
        wait_for(f"http://127.0.0.1:{port}/api/version")
    return process


def start_gateway(venv: Path, routing: str, balance: float) -> subprocess.Popen[bytes]:
    """Start the gateway under gunicorn in front of the backends, with ``routing``."""
    env = {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{GATEWAY_PORT}", "GATEWAY_WORKERS": "2",
           "GATEWAY_OLLAMA_URL": ",".join(f"http://127.0.0.1:{p}" for p in BACKEND_PORTS),
           "GATEWAY_ROUTING": routing, "GATEWAY_PREFIX_BALANCE": str(balance),
           "GATEWAY_AUTH_DISABLED": "1",
           "GATEWAY_RATE_LIMIT_DISABLED": "1", "GATEWAY_LOG_LEVEL": "warning",
           "GATEWAY_DEFAULT_MODEL": "sim"}
    process = subprocess.Popen([str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py",
                                "wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{GATEWAY_PORT}/readyz")
    return process


def ask(session: requests.Session, messages: list[dict[str, str]]) -> tuple[float, str]:
    """Send one chat turn; return its time to first token and the answer."""
    started = time.monotonic()
    first, pieces = None, []
    with session.post(f"http://127.0.0.1:{GATEWAY_PORT}/api/chat", stream=True, timeout=120,
                      json={"model": "sim", "messages": messages}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            content = json.loads(line)["message"]["content"]
            if content and first is None:
                first = time.monotonic() - started
            pieces.append(content)
    return first if first is not None else time.monotonic() - started, "".join(pieces)


def conversation(index: int, turns: int, shared: bool, ttfts: list[float]) -> None:
    """Run one session's turns, each resending the conversation so far."""
    rng = random.Random(index)
    messages = [{"role": "system", "content": SYSTEM}] if shared else []
    with requests.Session() as session:
        for _ in range(turns):
            length = 40 if shared else 300 + 60 * 4  # as long as an average turn's prompt
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=length))})
            ttft, answer = ask(session, messages if shared else messages[-1:])
            ttfts.append(ttft)
            messages.append({"role": "assistant", "content": answer})


def run(args: argparse.Namespace, routing: str, workload: str) -> dict[str, Any]:
    """Run one workload with one routing setting; return its figures."""
    backends = start_backends(args)
    gateway = start_gateway(args.venv, routing, args.balance)
    ttfts: list[float] = []
    try:
        shared = workload == "multi-turn"
        threads = [threading.Thread(target=conversation, args=(
                       i, args.turns if shared else args.flat_turns, shared, ttfts))
                   for i in range(args.sessions)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        stats = [json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/_sim/stats"))
                 for p in BACKEND_PORTS]
    finally:
        gateway.terminate()
        gateway.wait(30)
        backends.terminate()
        backends.wait(10)
    return summary(routing, workload, ttfts, elapsed, stats)


def summary(routing: str, workload: str, ttfts: list[float], elapsed: float,
            stats: list[dict[str, int]]) -> dict[str, Any]:
    """Return one run's figures: TTFT, throughput, cache share, load balance."""
    ordered = sorted(ttfts)
    served = [s["requests"] for s in stats]
    prompt = sum(s["prompt_tokens"] for s in stats)
    return {"routing": routing, "workload": workload, "requests": len(ttfts),
            "rps": round(len(ttfts) / elapsed, 1),
            "ttft_p50_ms": round(statistics.median(ordered) * 1000, 1),
            "ttft_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
            "cached_share": round(sum(s["cached_tokens"] for s in stats) / max(1, prompt), 3),
            "max_over_mean_load": round(max(served) / statistics.mean(served), 2),
            "per_backend": served}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Plot TTFT p50 and cached share per routing and workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in results}, reverse=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("ttft_p50_ms", "rps", "cached_share"),
                              ("TTFT p50 (ms)", "requests / s", "prompt tokens from cache"),
                              strict=True):
        for offset, routing in enumerate(ROUTINGS):
            values = [next(r[key] for r in results if r["routing"] == routing
                           and r["workload"] == w) for w in workloads]
            ax.bar([i + offset * 0.27 for i in range(len(workloads))], values, 0.27,
                   label=routing)
        ax.set_xticks([i + 0.27 for i in range(len(workloads))], workloads)
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--flat-turns", type=int, default=2)
    parser.add_argument("--prefill", type=float, default=0.0005,
                        help="seconds per uncached prompt token (2,000 tokens/s)")
    parser.add_argument("--capacity", type=int, default=4000)
    parser.add_argument("--itl", type=float, default=0.01)
    parser.add_argument("--balance", type=float, default=0.25, help="GATEWAY_PREFIX_BALANCE")
    parser.add_argument("--workloads", default="multi-turn,no-shared-prefix")
    parser.add_argument("--routings", default=",".join(ROUTINGS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    results = [run(args, routing, workload) for workload in args.workloads.split(",")
               for routing in args.routings.split(",")]
    for result in results:
        print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
