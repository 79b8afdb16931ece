"""Prefix routing on real servers: two llama-server instances report their cache hits.

llama.cpp's server reuses the KV cache of a prompt prefix it has seen and says
how many prompt tokens came from it (``usage.prompt_tokens_details.cached_tokens``,
which the gateway passes on). The same multi-turn workload (concurrent
sessions, each turn resending the conversation) runs through the gateway once
per routing setting, the servers restarted each time; the share of prompt
tokens served from cache is the figure.

    python3 scripts/bench_prefix_real.py [--sessions 8 --slots 4 --turns 8 --cache-ram 0]

Needs ../shared/realbackend (the tiny model) and the test extra (it starts the
servers as the integration tests do).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_gateway  # noqa: E402
from tests.integration.realbackend import llama_server  # noqa: E402

ROUTINGS = ("least-busy", "prefix", "round-robin")
WORDS = "def class return import self value items print range len key data list".split()


def session(gateway: str, index: int, turns: int, think: float,
            counts: list[tuple[int, int]]) -> None:
    """Run one conversation, pausing up to ``think`` seconds between turns as a user
    would (sessions in lockstep would keep their order, and land alike under any
    routing); note each turn's prompt and cached tokens."""
    rng = random.Random(index)
    messages = [{"role": "system", "content": " ".join(rng.choices(WORDS, k=60))}]
    with requests.Session() as http:
        for _ in range(turns):
            time.sleep(rng.uniform(0, think))
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=20))})
            answer = http.post(gateway + "/v1/chat/completions", timeout=120, json={
                "model": "tiny", "messages": messages, "max_tokens": 8, "seed": index}).json()
            usage = answer["usage"]
            counts.append((usage["prompt_tokens"],
                           usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)))
            messages.append({"role": "assistant",
                             "content": answer["choices"][0]["message"]["content"]})


def run(routing: str, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Run the workload with ``routing`` in front of two fresh llama-servers."""
    sessions, turns = args.sessions, args.turns
    # --cache-ram 0: only the slots' KV cache, as on a GPU (llama.cpp also keeps a large
    # prompt cache in host memory by default, which remembers every prompt of this test).
    extra = ("--cache-ram", str(args.cache_ram), "--parallel", str(args.slots),
             "--ctx-size", str(1024 * args.slots))
    with llama_server(folder / f"{routing}-a", extra=extra) as first, \
            llama_server(folder / f"{routing}-b", extra=extra) as second:
        gateway = start_gateway({"GATEWAY_OLLAMA_URL": "", "GATEWAY_ROUTING": routing,
                                 "GATEWAY_OPENAI_URL": f"{first}/v1,{second}/v1",
                                 "GATEWAY_DEFAULT_MODEL": "tiny"}, folder / f"{routing}.log")
        counts: list[tuple[int, int]] = []
        try:
            threads = [threading.Thread(target=session,
                                        args=(gateway.url, i, turns, args.think, counts))
                       for i in range(sessions)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            gateway.stop()
    prompt, cached = sum(p for p, _ in counts), sum(c for _, c in counts)
    return {"routing": routing, "requests": len(counts), "prompt_tokens": prompt,
            "cached_tokens": cached, "cached_share": round(cached / max(1, prompt), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="as many as the slots")
    parser.add_argument("--slots", type=int, default=4, help="llama-server's --parallel")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--cache-ram", type=int, default=0, help="llama-server's MiB")
    parser.add_argument("--think", type=float, default=0.5, help="most seconds between turns")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = [{**run(routing, args, Path(folder)), "run": n}
                   for n in range(args.repeat) for routing in ROUTINGS]
    for result in results:
        print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
