"""The floor of the card's stack: what Flask + requests + gevent cost per request with no gateway.

#14 asks for every scenario at or above the aiohttp proxy's rate. This
measures how far the card's own stack is from it, under the same load in one
run, all in front of the bench's Go simbackend under the bench's Go loadgen:

  direct              the simbackend itself: the ceiling
  aiohttp-proxy       the shared bench's aiohttp anchor (uvloop, one ClientSession)
  seed-flask-gevent   the seed article's Flask proxy under gunicorn's gevent worker
  floor-gevent        scripts/floor_proxy.py (Flask, one pooled requests.Session,
                      nothing else) under gunicorn's gevent worker
  floor-gateway-worker  the same app under the gateway's worker class
  gateway             the gateway as the shared bench starts it

For each: requests per second, p99 (and TTFT p99), and the CPU the candidate's processes
used per request (user + system, all its processes, over the counted run).

    python3 scripts/bench_floor.py --venv /tmp/bench-venv [--seconds 6 --out F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_relay import (
    BENCH,
    BIN,
    PROXY_PORT,
    ROOT,
    SIM_PORT,
    build_tools,
    simbackend,
    start,
    stop,
    wait_port,
)

SCENARIOS = {  # name: (simbackend flags, stream?, concurrency), as the shared bench's
    "json-fast": (["-tokens", "16"], False, 64),
    "stream-fast": (["-tokens", "32"], True, 64),
    "json-500ms": (["-tokens", "16", "-ttft", "500ms"], False, 256),
    "stream-1000": (["-tokens", "50", "-itl", "20ms"], True, 1000),
}
CANDIDATES = ("direct", "aiohttp-proxy", "seed-flask-gevent", "floor-gevent",
              "floor-gateway-worker", "gateway")
BODY = json.dumps({"model": "sim", "prompt": "Hello", "max_tokens": 256, "temperature": 0.7})
GEVENT = ["-k", "gevent", "--worker-connections", "4000"]
WORKER = ["-k", "flask_inference_gateway.worker.GatewayWorker", "--worker-connections", "4000"]


def command_for(name: str, venv: Path) -> tuple[list[str], Path, dict[str, str]]:
    """Return the command, folder and environment that start one candidate."""
    gunicorn = [str(venv / "bin" / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{PROXY_PORT}"]
    sim = f"http://127.0.0.1:{SIM_PORT}"
    env = {**os.environ, "BACKEND_URL": sim, "PYTHONPATH": str(ROOT)}
    if name == "aiohttp-proxy":
        return (gunicorn + ["-k", "aiohttp.GunicornUVLoopWebWorker", "--no-control-socket",
                            "aiohttp_proxy:app"], BENCH / "anchors", env)
    if name == "seed-flask-gevent":
        return gunicorn + GEVENT + ["seed_flask:app"], BENCH / "anchors", env
    if name.startswith("floor-"):
        kind = GEVENT if name == "floor-gevent" else WORKER
        return gunicorn + kind + ["floor_proxy:create_app()"], ROOT / "scripts", env
    env.update(GATEWAY_BIND=f"127.0.0.1:{PROXY_PORT}", GATEWAY_OLLAMA_URL=sim,
               GATEWAY_AUTH_DISABLED="1", GATEWAY_RATE_LIMIT_DISABLED="1",
               GATEWAY_LOG_LEVEL="warning")
    return [str(venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], ROOT, env


def cpu_ticks(group: int) -> int:
    """Return the user + system clock ticks the live processes of a group have used."""
    total = 0
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.getpgid(int(entry)) != group:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue  # exited while being read
    return total


def loadgen(url: str, concurrency: int, *args: str) -> dict[str, Any]:
    """Run the bench's loadgen against ``url``; return its summary."""
    out = subprocess.run([str(BIN / "loadgen"), "-url", url, "-body", BODY, "-c",
                          str(concurrency), "-timeout", "60s", *args], capture_output=True,
                         check=True, text=True).stdout
    return json.loads(out)


def measure(name: str, stream: bool, concurrency: int, args: argparse.Namespace) -> dict:
    """Start one candidate, load it, and return its row."""
    process = None
    if name == "direct":
        url = f"http://127.0.0.1:{SIM_PORT}/v1/completions"
    else:
        command, cwd, env = command_for(name, args.venv)
        process = start(command, env, cwd)
        wait_port(PROXY_PORT)
        time.sleep(3.0)  # every worker booted
        url = f"http://127.0.0.1:{PROXY_PORT}/v1/generate" + ("/stream" if stream else "")
    try:
        loadgen(url, concurrency, "-n", str(concurrency))  # warm-up
        before = cpu_ticks(process.pid) if process else 0
        summary = loadgen(url, concurrency, "-n", "0", "-d", f"{args.seconds}s")
        used = (cpu_ticks(process.pid) - before) / os.sysconf("SC_CLK_TCK") if process else 0
    finally:
        if process is not None:
            stop(process)
    done = summary["ok"]
    return {"candidate": name, "rps": round(summary["rps"], 1),
            "p99_ms": summary["total_ms"]["p99"], "ttft_p99_ms": summary["ttft_ms"]["p99"],
            "cpu_us_per_request": round(used / done * 1e6) if process and done else None,
            "errors": sum(summary.get("errors", {}).values()),
            "status": summary.get("status", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    build_tools()
    results = []
    for scenario in args.scenarios.split(","):
        flags, stream, concurrency = SCENARIOS[scenario]
        with simbackend(flags):
            for name in args.only.split(","):
                row = {"scenario": scenario, **measure(name, stream, concurrency, args)}
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
