"""Soak: streams for a long while, with clients leaving, faults, keys and limits on.

The gateway (gunicorn + gevent, ``--workers``) runs in front of the shared
bench's Go simulated backend (``-tokens 50 -itl 20ms``) with API keys, rate
limits, token budgets, stream caps and a backend cap in Redis. ``--clients``
greenlets stream without pause; one request in ``--leave-every`` is dropped
after a few tokens (the client leaves), one in ``--fault-every`` carries a
fault (``[[sim:status=503]]``, ``[[sim:die-after=3]]``, ``[[sim:hang]]``,
an over-long body, an unknown model). Every 10 s it samples each worker's
RSS and open file descriptors and the number of series in /metrics; at the
end it checks that RSS stayed within 10 % of its value after warm-up, that
the descriptors came back to their baseline once the load stopped, and that
the series count stayed bounded.

    python3 scripts/soak.py --venv .venv --minutes 20 --out docs/data/soak.json \\
        --plot docs/images/soak.png
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
BACKEND_PORT, GATEWAY_PORT, REDIS_PORT = 12301, 12300, 12302
KEYS = [f"soak{i}:gw-soak-key-{i:02d}-0123456789abcdef" for i in range(8)]
FD_SLACK = 10  # descriptors a worker may hold past its baseline once the load stops
FAULTS = ["[[sim:status=503]]", "[[sim:die-after=3]]", "[[sim:hang]]", "LONG", "MODEL"]


def start(command: list[str], env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a process, its output to ``log`` or nowhere."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(url: str, seconds: float = 30) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {seconds:g} s")


def build_backend() -> Path:
    """Build the shared bench's simulated backend (Go) into /tmp."""
    binary = Path("/tmp/soak-simbackend")
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=BENCH / "simbackend",
                   check=True)
    return binary


def gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """Return the gateway's settings: keys, limits, budgets, caps, Redis."""
    return {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{GATEWAY_PORT}",
            "GATEWAY_WORKERS": str(args.workers), "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_OLLAMA_URL": f"http://127.0.0.1:{BACKEND_PORT}",
            "GATEWAY_DEFAULT_MODEL": "sim", "GATEWAY_API_KEYS": ",".join(KEYS),
            "GATEWAY_API_KEYS_FILE": "", "GATEWAY_RATE_LIMIT": "100000/minute",
            "GATEWAY_TOKENS_PER_MINUTE": "10000000", "GATEWAY_MAX_STREAMS": "400",
            "GATEWAY_BACKEND_MAX_CONCURRENCY": str(args.cap), "GATEWAY_QUEUE_TIMEOUT": "10",
            "GATEWAY_FIRST_TOKEN_TIMEOUT": "5", "GATEWAY_READ_TIMEOUT": "5",
            "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
            "GATEWAY_MAX_BODY_BYTES": "65536"}


def one_request(session: requests.Session, turn: int, args: argparse.Namespace,
                counts: dict[str, int]) -> None:
    """Send one stream: whole, left after a few tokens, or with a fault."""
    key = KEYS[turn % len(KEYS)].split(":", 1)[1]
    body: dict[str, Any] = {"model": "sim", "prompt": "Hello there", "max_tokens": 64}
    leave = turn % args.leave_every == 0
    if turn % args.fault_every == 0:
        fault = FAULTS[(turn // args.fault_every) % len(FAULTS)]
        if fault == "LONG":
            body["prompt"] = "x" * 100_000
        elif fault == "MODEL":
            body["model"] = "no-such-model"
        else:
            body["prompt"] = f"{fault} Hello"
    try:
        with session.post(f"http://127.0.0.1:{GATEWAY_PORT}/v1/generate/stream", json=body,
                          headers={"Authorization": f"Bearer {key}"}, stream=True,
                          timeout=(5, 15)) as response:
            counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
            for index, _line in enumerate(response.iter_lines()):
                if leave and index >= 6:
                    counts["left"] = counts.get("left", 0) + 1
                    return  # leaving the block closes the connection mid-stream
    except requests.RequestException as exc:
        name = type(exc).__name__
        counts[name] = counts.get(name, 0) + 1


def client(index: int, until: float, args: argparse.Namespace, counts: dict[str, int],
           turns: itertools.count) -> None:
    """Stream without pause until ``until``."""
    gevent.sleep(random.random())  # spread the start
    with requests.Session() as session:
        while time.monotonic() < until:
            one_request(session, next(turns), args, counts)


def workers(master: int) -> list[int]:
    """Return the gunicorn workers' pids."""
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def sample(master: int, started: float) -> dict[str, Any]:
    """Return each worker's RSS (MB) and open fds, and the series count of /metrics."""
    rss, fds = {}, {}
    for pid in workers(master):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
            rss[str(pid)] = round(kb / 1024, 1)
            fds[str(pid)] = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
    try:
        text = requests.get(f"http://127.0.0.1:{GATEWAY_PORT}/metrics", timeout=5).text
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    except requests.RequestException:
        series = -1
    return {"t": round(time.monotonic() - started, 1), "rss_mb": rss, "fds": fds,
            "series": series}


def sockets(master: int) -> dict[str, dict[str, int]]:
    """Return each worker's TCP sockets by what they connect to (for the report)."""
    out = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
    names = {str(GATEWAY_PORT): "clients", str(BACKEND_PORT): "backend",
             str(REDIS_PORT): "redis"}
    found: dict[str, dict[str, int]] = {}
    for pid in workers(master):
        kinds: dict[str, int] = {}
        for line in out.splitlines():
            if f"pid={pid}," not in line:
                continue
            parts = line.split()
            local, peer = parts[3].rsplit(":", 1)[1], parts[4].rsplit(":", 1)[1]
            kind = names.get(local if local == str(GATEWAY_PORT) else peer, "other")
            kinds[f"{kind} {parts[0]}"] = kinds.get(f"{kind} {parts[0]}", 0) + 1
        found[str(pid)] = kinds
    return found


def verdict(samples: list[dict[str, Any]], baseline: dict[str, Any],
            after: dict[str, Any], warmup: float) -> dict[str, Any]:
    """Check RSS within 10 % of its post-warm-up value, fds back, series bounded."""
    warm = [s for s in samples if s["t"] >= warmup]
    checks: dict[str, Any] = {"rss": {}, "fds_baseline": baseline["fds"],
                              "fds_after": after["fds"]}
    for pid, first in warm[0]["rss_mb"].items():
        values = [s["rss_mb"][pid] for s in warm if pid in s["rss_mb"]]
        drift = max(abs(v - first) for v in values) / first
        checks["rss"][pid] = {"after_warmup_mb": first, "max_mb": max(values),
                              "max_drift": round(drift, 3), "ok": drift <= 0.10}
    series = [s["series"] for s in warm]
    checks["series"] = {"after_warmup": series[0], "max": max(series),
                        "ok": max(series) <= series[0] * 1.1 + 20}
    # A few sockets live as long as the worker (its pub/sub subscriber, a pooled
    # connection the pollers keep using); thousands of idle ones must be gone.
    checks["fds_ok"] = all(after["fds"].get(pid, 0) <= count + FD_SLACK
                           for pid, count in baseline["fds"].items())
    checks["ok"] = (all(r["ok"] for r in checks["rss"].values()) and checks["series"]["ok"]
                    and checks["fds_ok"])
    return checks


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    """Plot RSS per worker, open fds and /metrics series over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    pids = sorted({pid for s in samples for pid in s["rss_mb"]})
    minutes = [s["t"] / 60 for s in samples]
    for index, pid in enumerate(pids):
        axes[0].plot(minutes, [s["rss_mb"].get(pid) for s in samples], label=f"worker {index}")
        axes[1].plot(minutes, [s["fds"].get(pid) for s in samples], label=f"worker {index}")
    axes[2].plot(minutes, [s["series"] for s in samples])
    for ax, title in zip(axes, ("RSS per worker (MB)", "open file descriptors",
                                "series in /metrics"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("minutes")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=120, help="seconds")
    parser.add_argument("--clients", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cap", type=int, default=500)
    parser.add_argument("--leave-every", type=int, default=7)
    parser.add_argument("--fault-every", type=int, default=11)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    backend = start([str(build_backend()), "-addr", f"127.0.0.1:{BACKEND_PORT}",
                     "-tokens", "50", "-itl", "20ms"])
    redis = start([shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT),
                   "--save", "", "--appendonly", "no"])
    gateway = start([str(args.venv / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                    gateway_env(args), Path("/tmp/soak-gateway.log"))
    try:
        wait_for(f"http://127.0.0.1:{GATEWAY_PORT}/readyz")
        counts: dict[str, int] = {}
        warm = [gevent.spawn(one_request, requests.Session(), i, args, counts)
                for i in range(1, 4 * len(KEYS))]  # every worker opens its files and pools
        gevent.joinall(warm)
        gevent.sleep(50)  # ... and closes the connections the warm-up left idle
        started = time.monotonic()
        baseline = sample(gateway.pid, started)
        counts.clear()
        samples: list[dict[str, Any]] = []
        until = started + args.minutes * 60
        turns = itertools.count(1)
        load = [gevent.spawn(client, i, until, args, counts, turns) for i in range(args.clients)]
        while time.monotonic() < until:
            gevent.sleep(10)
            samples.append(sample(gateway.pid, started))
            print(json.dumps({**samples[-1], "answers": counts}), flush=True)
        gevent.joinall(load, timeout=60)
        # Hung streams time out; pooled backend connections idle past
        # GATEWAY_UPSTREAM_IDLE_SECONDS (30 s) are closed by the next pass (every 15 s).
        gevent.sleep(50)
        after = sample(gateway.pid, started) | {"sockets": sockets(gateway.pid)}
        result = {"settings": vars(args) | {"venv": str(args.venv), "out": str(args.out),
                                            "plot": str(args.plot)},
                  "answers": counts, "baseline": baseline, "after": after,
                  "verdict": verdict(samples, baseline, after, args.warmup), "samples": samples}
    finally:
        for process in (gateway, backend, redis):
            process.terminate()
    print(json.dumps(result["verdict"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result["samples"], args.plot)


if __name__ == "__main__":
    main()
