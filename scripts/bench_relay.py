"""Same-kind streams: an OpenAI client through the gateway to an OpenAI-compatible server.

The shared bench (../shared/bench/run.py) measures the gateway's own
dialect, which always re-encodes tokens. This puts the OpenAI route beside
the same proxies in one run, all in front of the bench's Go simbackend
speaking /v1/completions, under the bench's Go loadgen:

  direct          the simbackend itself: the ceiling
  aiohttp-proxy   the shared bench's aiohttp anchor (it relays the
                  simbackend's /v1/completions bytes as they come)
  passthrough     the gateway, GATEWAY_STREAM_PASSTHROUGH=1 (the default):
                  the server's own chunks, parsed only where needed
  re-encoded      the gateway, GATEWAY_STREAM_PASSTHROUGH=0: every token
                  decoded and encoded again

    python3 scripts/bench_relay.py --venv /tmp/bench-venv [--seconds 6 --out F]

The venv needs the project, gunicorn and aiohttp; the Go tools are built into
BENCH_BIN (default /tmp/gateway-bench-bin) by run.py, or here when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_prefix import wait_for

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
BIN = Path(os.environ.get("BENCH_BIN", "/tmp/gateway-bench-bin"))
SIM_PORT, PROXY_PORT = 12311, 12310
SCENARIOS = {  # name: (simbackend flags, concurrency)
    "stream-fast": (["-tokens", "32"], 64),
    "stream-1000": (["-tokens", "50", "-itl", "20ms"], 1000),
}
BODY = {"model": "sim", "prompt": "Hello", "max_tokens": 256, "temperature": 0.7,
        "stream": True}


def build_tools() -> None:
    """Build the bench's simbackend and loadgen when they are not there yet."""
    for tool in ("simbackend", "loadgen"):
        if not (BIN / tool).exists():
            BIN.mkdir(parents=True, exist_ok=True)
            subprocess.run(["go", "build", "-o", str(BIN / tool), "."], cwd=BENCH / tool,
                           check=True)


def start(command: list[str], env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start a process in its own group, its output discarded."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process group and wait for it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def simbackend(flags: list[str]) -> Iterator[None]:
    """Run the bench's simbackend on ``SIM_PORT`` with ``flags`` while the block runs."""
    sim = start([str(BIN / "simbackend"), "-addr", f"127.0.0.1:{SIM_PORT}", *flags])
    try:
        wait_for(f"http://127.0.0.1:{SIM_PORT}/api/version")
        yield
    finally:
        stop(sim)


def start_candidate(name: str, venv: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start one candidate; return it (None: direct) and the URL to load."""
    sim = f"http://127.0.0.1:{SIM_PORT}"
    if name == "direct":
        return None, f"{sim}/v1/completions"
    bind = f"127.0.0.1:{PROXY_PORT}"
    if name == "aiohttp-proxy":
        env = {**os.environ, "BACKEND_URL": sim}
        process = start([str(venv / "bin" / "gunicorn"), "-k", "aiohttp.GunicornUVLoopWebWorker",
                         "-w", "2", "-b", bind, "aiohttp_proxy:app"], env, BENCH / "anchors")
        path = "/v1/generate/stream"
    else:
        env = {**os.environ, "GATEWAY_BIND": bind, "GATEWAY_OLLAMA_URL": "",
               "GATEWAY_OPENAI_URL": sim, "GATEWAY_AUTH_DISABLED": "1",
               "GATEWAY_RATE_LIMIT_DISABLED": "1", "GATEWAY_LOG_LEVEL": "warning",
               "GATEWAY_STREAM_PASSTHROUGH": "1" if name == "passthrough" else "0"}
        process = start([str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                        env)
        path = "/v1/completions"
    wait_port(PROXY_PORT)
    time.sleep(3.0)  # every worker booted
    return process, f"http://{bind}{path}"


def wait_port(port: int, seconds: float = 60) -> None:
    """Wait until something listens on ``port``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {seconds:g} s")


def load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Warm up, then run the closed-loop load; return loadgen's summary."""
    loadgen = str(BIN / "loadgen")
    body = json.dumps(BODY)
    subprocess.run([loadgen, "-url", url, "-body", body, "-c", str(concurrency),
                    "-n", str(concurrency), "-timeout", "60s"], capture_output=True, check=True)
    out = subprocess.run([loadgen, "-url", url, "-body", body, "-c", str(concurrency), "-n",
                          "0", "-d", f"{seconds}s", "-timeout", "60s"], capture_output=True,
                         check=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--only", default="direct,aiohttp-proxy,passthrough,re-encoded")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    build_tools()
    results = []
    for scenario, (flags, concurrency) in SCENARIOS.items():
        with simbackend(flags):
            for name in args.only.split(","):
                process, url = start_candidate(name, args.venv)
                try:
                    summary = load(url, concurrency, args.seconds)
                finally:
                    if process is not None:
                        stop(process)
                row = {"scenario": scenario, "candidate": name, "rps": round(summary["rps"], 1),
                       "ttft_p50_ms": summary["ttft_ms"]["p50"],
                       "ttft_p99_ms": summary["ttft_ms"]["p99"],
                       "errors": sum(summary.get("errors", {}).values())}
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
