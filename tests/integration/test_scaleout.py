"""Several backends behind one gunicorn gateway: spreading, routing, failover, health, queueing.

Every backend is a fake started by the test on a loopback port: Ollama
(tests/fake_ollama.py) or OpenAI-compatible (tests/fake_openai.py).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import GatewayProcess, free_port
from tests.fake_ollama import FakeOllama
from tests.integration.test_gunicorn import (
    Reply,
    body_for,
    call,
    open_raw_stream,
    wait_until,
)

GENERATE, STREAM = "/v1/generate", "/v1/generate/stream"
# Probes off unless a test turns them on: routing then follows only passive signals.
QUIET = {"GATEWAY_PROBE_SECONDS": "0"}


def urls(*fakes: FakeOllama) -> str:
    """Return the comma-separated base URLs of ``fakes``."""
    return ",".join(fake.url for fake in fakes)


def ok_stream(reply: Reply) -> bool:
    """Return whether a stream reply is a 200 that ended with its done event."""
    return reply.status == 200 and bool(reply.data) and reply.data[-1].data.get("done") is True


def many(url: str, path: str, count: int, prompt: str = "hello", **extra: object) -> list[Reply]:
    """Send ``count`` requests at once; return the replies."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(url, path, body_for(path, prompt, **extra),
                                            limit_s=15), range(count)))


def ready(server: GatewayProcess) -> dict[str, dict]:
    """Return /readyz's backends by URL."""
    body = json.loads(call(server.url, "/readyz", method="GET").text)
    return {b["url"]: b for b in body["backends"]}


def test_concurrent_requests_spread_over_backends(gateway_server, fakes) -> None:
    """20 streams at once over 2 backends: fewest in flight first, so each gets about half."""
    a, b = fakes(itl=0.05), fakes(itl=0.05)
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(a, b), GATEWAY_ROUTING="least-busy", **QUIET)
    replies = many(server.url, STREAM, 20)
    assert all(ok_stream(r) for r in replies)
    served = (a.stats["completed"], b.stats["completed"])
    print(f"\n20 concurrent streams over 2 backends: {served}")
    assert sum(served) == 20 and min(served) >= 8, served


def test_one_conversation_stays_on_one_backend_in_every_worker(gateway_server, fakes) -> None:
    """Prefix routing: both workers send each conversation's turns to the same backend,
    and different conversations spread over the backends."""
    backends = [fakes() for _ in range(3)]
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(*backends), GATEWAY_WORKERS="2", **QUIET)
    homes = []
    for session in range(12):
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Session {session}: plan a trip."}]
        seen = []
        for turn in range(4):
            assert call(server.url, "/v1/chat", {"messages": messages}).status == 200
            seen.append(next(i for i, b in enumerate(backends) if b.requests_seen))
            for backend in backends:
                backend.reset()
            messages += [{"role": "assistant", "content": "Sure."},
                         {"role": "user", "content": f"And on day {turn + 2}?"}]
        assert len(set(seen)) == 1, seen
        homes.append(seen[0])
    assert len(set(homes)) == 3, homes


@pytest.mark.parametrize("fault", ["refused", "busy-503"])
def test_a_failing_backend_is_routed_around(gateway_server, fakes, fault: str) -> None:
    """One backend refuses connections or answers 503: every request succeeds on the other."""
    good = fakes()
    if fault == "refused":
        bad_url = f"http://127.0.0.1:{free_port()}"
    else:
        bad = fakes()
        bad.fail_status = 503
        bad_url = bad.url
    server = gateway_server(GATEWAY_OLLAMA_URL=f"{bad_url},{good.url}",
                            GATEWAY_ROUTING="least-busy", **QUIET)
    replies = [call(server.url, path, body_for(path)) for path in [GENERATE, STREAM] * 5]
    assert [r.status for r in replies] == [200] * 10, [r.text for r in replies]
    assert all(ok_stream(r) for r in replies[1::2])
    assert good.stats["completed"] == 10
    # A refusing backend is tried until its circuit opens (3 failures); a busy one
    # comes after the good one for its Retry-After (1 s) each time it says 503.
    retried = server.log().count("trying another backend")
    assert 1 <= retried <= 3, retried


def test_a_backend_lacking_the_model_sends_it_elsewhere(gateway_server, fakes) -> None:
    """Model lists not learnt yet (probes off): one backend's 404 for the model is tried on
    the other, which serves it; the first is then left alone for that model."""
    lacking, serving = fakes(models=("llama3.2:latest",)), fakes(models=("qwen2.5:latest",))
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(lacking, serving), GATEWAY_WORKERS="1",
                            GATEWAY_ROUTING="round-robin", **QUIET)
    for _ in range(6):  # in turn: the first or the second goes to the lacking backend
        reply = call(server.url, GENERATE, {"prompt": "hi", "model": "qwen2.5"})
        assert reply.status == 200, reply.text
    assert serving.stats["completed"] == 6
    asked = [body for body in lacking.requests_seen if body.get("model") == "qwen2.5"]
    assert len(asked) <= 1  # at most one 404, then it is no candidate for qwen2.5
    assert call(server.url, GENERATE, {"prompt": "hi", "model": "nope"}).status == 404


def test_a_worker_learns_the_model_lists_before_its_first_request(gateway_server,
                                                                 fakes) -> None:
    """Probes on: the first request waits for the worker's first probe, so the backend that
    lacks the model is never asked for it (not even once, as with probes off)."""
    lacking, serving = fakes(models=("llama3.2:latest",)), fakes(models=("qwen2.5:latest",))
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(lacking, serving), GATEWAY_WORKERS="1",
                            GATEWAY_ROUTING="round-robin", GATEWAY_PROBE_SECONDS="30")
    for _ in range(4):
        assert call(server.url, GENERATE, {"prompt": "hi", "model": "qwen2.5"}).status == 200
    assert lacking.requests_seen == [] and serving.stats["completed"] == 4


def test_requests_follow_model_availability(gateway_server, fakes) -> None:
    """An Ollama backend serves llama3.2, an OpenAI-compatible one qwen: each model goes home."""
    ollama = fakes(models=("llama3.2:latest",))
    vllm = fakes(openai=True, models=("qwen2.5",))
    server = gateway_server(GATEWAY_OLLAMA_URL=ollama.url, GATEWAY_OPENAI_URL=vllm.url + "/v1",
                            GATEWAY_PROBE_SECONDS="0.2")
    assert wait_until(lambda: all(b["models"] for b in ready(server).values()), 5)
    for model in ["llama3.2", "qwen2.5", "llama3.2", "qwen2.5"]:
        for path in (GENERATE, STREAM, "/v1/chat", "/v1/chat/stream"):
            reply = call(server.url, path, body_for(path, model=model))
            assert reply.status == 200, reply.text
    assert ollama.stats["completed"] == 8 and vllm.stats["completed"] == 8
    assert {r["model"] for r in ollama.requests_seen} == {"llama3.2"}
    assert {r["model"] for r in vllm.requests_seen} == {"qwen2.5"}
    models = json.loads(call(server.url, "/v1/models", method="GET").text)
    assert sorted(m["id"] for m in models["data"]) == ["llama3.2:latest", "qwen2.5"]


def test_requests_prefer_the_backend_holding_the_model(gateway_server, fakes) -> None:
    """Both serve llama3.2, one has it in VRAM (/api/ps), the other holds another model:
    the one holding it gets every sequential request, so no model is swapped out."""
    other, warm = fakes(), fakes()
    warm.loaded = [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size_vram": 1}]
    other.loaded = [{"name": "sim:latest", "model": "sim:latest", "size_vram": 1}]
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(other, warm), GATEWAY_PROBE_SECONDS="0.2")
    assert wait_until(lambda: ready(server)[warm.url]["loaded"], 5)
    assert wait_until(lambda: ready(server)[other.url]["loaded"], 5)
    for _ in range(6):
        assert call(server.url, GENERATE, body_for(GENERATE)).status == 200
    assert (other.stats["completed"], warm.stats["completed"]) == (0, 6)


def test_sequential_requests_share_idle_backends(gateway_server, fakes) -> None:
    """One backend holds the model, the other holds nothing: sequential requests alternate
    (the bug was 18 of 20 to the first: residency outranked an empty, idle GPU)."""
    empty, warm = fakes(), fakes()
    warm.loaded = [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size_vram": 1}]
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(empty, warm), GATEWAY_WORKERS="1",
                            GATEWAY_ROUTING="least-busy", GATEWAY_PROBE_SECONDS="0.2")
    assert wait_until(lambda: ready(server)[warm.url]["loaded"], 5)
    for _ in range(20):
        assert call(server.url, GENERATE, body_for(GENERATE)).status == 200
    assert (empty.stats["completed"], warm.stats["completed"]) == (10, 10)


def test_a_backend_dying_mid_stream(gateway_server, fakes) -> None:
    """The cut client gets an error event; others avoid the dead backend until its probe passes."""
    a, b = fakes(itl=0.05, tokens=200), fakes(itl=0.05, tokens=200)
    server = gateway_server(GATEWAY_OLLAMA_URL=urls(a, b), GATEWAY_BREAKER_FAILURES="1",
                            GATEWAY_BREAKER_COOLDOWN="60", GATEWAY_PROBE_SECONDS="0.3")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, server.url, STREAM, body_for(STREAM), limit_s=15)
        assert wait_until(lambda: a.stats["active"] + b.stats["active"] == 1, 5)
        victim, survivor = (a, b) if a.stats["active"] else (b, a)
        port = victim.port
        time.sleep(0.3)
        victim.stop()
        cut = pending.result()
    assert cut.status == 200 and cut.data[-1].name == "error", cut.data[-3:]
    assert cut.data[-1].data["error"]["type"] == "backend_stream_broken"
    assert ready(server)[victim.url]["ok"] is False
    attempts_before = server.log().count("trying another backend")
    for _ in range(4):
        assert call(server.url, GENERATE, body_for(GENERATE, "[[sim:tokens=2]]")).status == 200
    assert server.log().count("trying another backend") == attempts_before  # not even tried
    revived = fakes(port=port, tokens=2)
    assert wait_until(lambda: ready(server)[revived.url]["ok"], 5)
    many(server.url, GENERATE, 6, "[[sim:tokens=2]] [[sim:itl=0.1]]")
    assert revived.stats["completed"] >= 1 and survivor.stats["completed"] >= 5


def test_all_busy_waits_in_the_queue_then_503(gateway_server, fakes) -> None:
    """One slot, taken: the next request waits GATEWAY_QUEUE_TIMEOUT, then 503 + Retry-After."""
    fake = fakes()
    server = gateway_server(GATEWAY_OLLAMA_URL=fake.url, GATEWAY_BACKEND_MAX_CONCURRENCY="1",
                            GATEWAY_QUEUE_TIMEOUT="0.5", **QUIET)
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(call, server.url, STREAM, body_for(STREAM, "[[sim:itl=0.1]] "
                                                              "[[sim:tokens=20]]"))
        assert wait_until(lambda: fake.stats["active"] == 1, 5)
        refused = call(server.url, GENERATE, body_for(GENERATE))
        assert ok_stream(long.result())
    assert refused.status == 503, refused.text
    assert json.loads(refused.text)["error"]["type"] == "backend_busy"
    assert refused.headers["Retry-After"].isdigit()
    assert 0.45 < refused.elapsed < 1.5, refused.elapsed
    assert fake.stats["requests"] == 1  # the refused request never reached the GPU


def test_a_client_leaving_the_queue_frees_its_place(gateway_server, fakes) -> None:
    """Queue of one: a queued client hangs up, so the next one queues (not 503) and is served."""
    fake = fakes()
    server = gateway_server(GATEWAY_OLLAMA_URL=fake.url, GATEWAY_BACKEND_MAX_CONCURRENCY="1",
                            GATEWAY_QUEUE_SIZE="1", GATEWAY_QUEUE_TIMEOUT="10", **QUIET)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(call, server.url, STREAM, body_for(STREAM, "[[sim:itl=0.1]] "
                                                              "[[sim:tokens=15]]"))
        assert wait_until(lambda: fake.stats["active"] == 1, 5)
        with open_raw_stream(server.url, STREAM, body_for(STREAM)):
            time.sleep(0.3)  # queued: the one place is taken
            full = call(server.url, GENERATE, body_for(GENERATE))
        time.sleep(0.5)  # the gateway notices the hang-up within its 0.25 s poll
        queued = pool.submit(call, server.url, GENERATE, body_for(GENERATE))
        assert ok_stream(long.result())
        served = queued.result()
    assert full.status == 503 and "queued" in json.loads(full.text)["error"]["message"]
    assert served.status == 200, served.text
    assert fake.stats["requests"] == 2  # the long stream and the last request, never the leaver


def test_sigterm_lets_streams_finish_and_ends_the_rest_with_an_event(gateway_server,
                                                                     fakes) -> None:
    """SIGTERM: short streams complete; those past the grace period get a shutting_down event."""
    fake = fakes()
    server = gateway_server(GATEWAY_OLLAMA_URL=fake.url, GATEWAY_GRACEFUL_TIMEOUT="4", **QUIET)
    short = body_for(STREAM, "[[sim:itl=0.1]] [[sim:tokens=10]]")
    long = body_for(STREAM, "[[sim:itl=0.1]] [[sim:tokens=200]]")
    with ThreadPoolExecutor(5) as pool:
        replies = [pool.submit(call, server.url, STREAM, body, limit_s=15)
                   for body in [short] * 3 + [long] * 2]
        assert wait_until(lambda: fake.stats["active"] == 5, 5)
        stopped_at = time.monotonic()
        server.proc.terminate()
        done = [r.result() for r in replies]
        server.proc.wait(10)
    exited_s = time.monotonic() - stopped_at
    print(f"\nSIGTERM with 5 streams: gunicorn exited after {exited_s:.2f}s")
    assert all(ok_stream(r) for r in done[:3]), [r.data[-1:] for r in done[:3]]
    for reply in done[3:]:
        assert reply.status == 200 and reply.data[-1].name == "error", reply.data[-2:]
        assert reply.data[-1].data["error"]["type"] == "shutting_down"
        assert 2.5 < reply.elapsed < 4.0, reply.elapsed
    assert server.proc.returncode == 0 and exited_s < 5.5
    assert fake.wait_for("cancelled", 2, timeout=3), fake.stats  # their GPU work stopped
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_client_leaving_before_the_first_token_stops_the_generation(gateway_server,
                                                                      fakes) -> None:
    """A model still loading (no token yet) and the client hangs up: the backend is told."""
    fake = fakes()
    server = gateway_server(GATEWAY_OLLAMA_URL=fake.url, **QUIET)
    with open_raw_stream(server.url, STREAM, body_for(STREAM, "[[sim:ttft=20]]")):
        assert wait_until(lambda: fake.stats["active"] == 1, 5)
    left = time.monotonic()
    assert fake.wait_for("cancelled", 1, timeout=3), fake.stats
    took = time.monotonic() - left
    print(f"\nclient left before the first token: upstream cancelled after {took:.2f}s")
    assert took < 1.5
    assert wait_until(lambda: '"client_left"' in server.log(), 3), server.log()[-2000:]
