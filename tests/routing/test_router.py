"""Router: failover before the first token, health bookkeeping, model lists, probes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from flask_inference_gateway.core.errors import (
    BackendBusy,
    BackendError,
    BackendFailedRequest,
    BackendRejected,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    ClientLeft,
    GatewayError,
    ModelNotFound,
    NoBackendAvailable,
)
from flask_inference_gateway.core.types import (
    Completion,
    GenerationRequest,
    Probe,
    Timeouts,
    Usage,
)
from flask_inference_gateway.routing.pool import BackendPool
from flask_inference_gateway.routing.router import Router
from flask_inference_gateway.upstream.ollama import OllamaBackend
from tests.conftest import free_port
from tests.fake_ollama import FakeOllama
from tests.requests import typed

REQUEST = {"model": "m", "prompt": "Hi"}


class StubStream:
    """What the router needs of a TokenStream; ``prime`` raises ``prime_error``."""

    def __init__(self, text: str, prime_error: GatewayError | None = None) -> None:
        self.text, self.prime_error, self.backend = text, prime_error, ""
        self.finished, self.closed = False, False
        self.error: str | None = None
        self.error_message: str | None = None

    def prime(self) -> None:
        if self.prime_error is not None:
            raise self.prime_error

    def collect(self) -> Completion:
        self.finished = True
        return Completion("m", self.text, "stop", Usage(1, 1))

    def close(self) -> None:
        self.closed = True


class StubBackend:
    """Answers each call with the next outcome: "ok", an error, or ("prime", error)."""

    kind = "ollama"
    timeouts = Timeouts()

    def __init__(self, name: str, *outcomes: Any, models: list[str] | None = None) -> None:
        self.name, self.base_url = name, f"http://{name}:11434"
        self.outcomes, self.models, self.calls = list(outcomes), models, 0
        self.deadlines: list[float | None] = []
        self.streams: list[StubStream] = []

    def _next(self, deadline: float | None) -> Any:
        self.calls += 1
        self.deadlines.append(deadline)
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome() if callable(outcome) else outcome

    def stream(self, request: GenerationRequest,
               deadline: float | None = None) -> StubStream:
        outcome = self._next(deadline)
        stream = StubStream(self.name, outcome[1] if isinstance(outcome, tuple) else None)
        self.streams.append(stream)
        return stream

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        self._next(timeout)
        return [{"id": m, "from": self.name} for m in self.models or []]

    def probe(self, timeout: float) -> Probe:
        return Probe(self.list_models(timeout), {"m"}, "1.0")


def router_of(*backends: StubBackend, max_attempts: int = 3, total: float = 30.0,
              **pool_options: Any) -> Router:
    pool = BackendPool(backends, **pool_options)  # type: ignore[arg-type]
    # The first backend holds the model in memory, the others another model (they would
    # have to swap): the first is always tried first.
    for i, node in enumerate(pool.nodes):
        node.learn(Probe([{"id": "m"}], {"m"} if i == 0 else {"other"}))
    return Router(pool, timeouts=Timeouts(total=total), max_attempts=max_attempts)


def open_stream(router: Router, request: GenerationRequest) -> Any:
    """Open a stream as the service does; closing it closes it, then settles its slot once."""
    routed = router.open_stream(request)
    stream, close = routed.stream, routed.stream.close
    settled: list[bool] = []

    def close_and_settle() -> None:
        close()
        if not settled:
            settled.append(True)
            router.settle(routed)

    stream.close, stream.backend = close_and_settle, routed.node.url
    return stream


def complete(router: Router, request: GenerationRequest) -> Completion:
    """Serve a whole answer as the service does: open a stream, collect it, close it."""
    stream = open_stream(router, request)
    try:
        return stream.collect()
    finally:
        stream.close()


def run(router: Router, call: str) -> str:
    """Serve REQUEST by ``call``; return the name of the backend that answered."""
    if call == "complete":
        return complete(router, typed("generate", REQUEST)).text
    stream: Any = open_stream(router, typed("generate", REQUEST))
    stream.finished = True
    stream.close()
    return stream.text


def failures(router: Router) -> list[int]:
    return [node.failures for node in router.pool.nodes]


def in_flight(router: Router) -> list[int]:
    return [node.in_flight for node in router.pool.nodes]


RETRYABLE = [BackendUnavailable(), BackendTimeout(), BackendBusy(), BackendStreamBroken()]
RETRYABLE_IDS = ["unavailable", "timeout", "busy", "stream-broken"]


@pytest.mark.parametrize("error", RETRYABLE, ids=RETRYABLE_IDS)
@pytest.mark.parametrize("call", ["complete", "stream"])
def test_fails_over_before_the_first_token(call: str, error: GatewayError) -> None:
    a, b = StubBackend("a", error), StubBackend("b")
    router = router_of(a, b)
    assert run(router, call) == "b"
    assert (a.calls, b.calls) == (1, 1)
    assert in_flight(router) == [0, 0]
    assert failures(router) == [0 if isinstance(error, BackendBusy) else 1, 0]


@pytest.mark.parametrize("error", RETRYABLE, ids=RETRYABLE_IDS)
def test_stream_failing_before_its_first_token_is_closed_and_retried(
        error: GatewayError) -> None:
    a, b = StubBackend("a", ("prime", error)), StubBackend("b")
    router = router_of(a, b)
    stream: Any = open_stream(router, typed("chat", REQUEST))
    assert (stream.text, stream.backend) == ("b", "http://b:11434")
    assert a.streams[0].closed and not stream.closed
    assert in_flight(router) == [0, 1]  # b's slot is held until the stream closes
    stream.close()
    assert in_flight(router) == [0, 0]


@pytest.mark.parametrize(("error", "counted"), [
    (BackendRejected("bad option"), 0), (ClientLeft(), 0),
    (BackendError("CUDA out of memory"), 1), (BackendFailedRequest("unclosed action"), 0)],
    ids=["rejected", "client-left", "backend-error", "failed-request"])
@pytest.mark.parametrize("where", ["call", "prime"])
def test_never_retried(where: str, error: GatewayError, counted: int) -> None:
    a, b = StubBackend("a", ("prime", error) if where == "prime" else error), StubBackend("b")
    router = router_of(a, b)
    with pytest.raises(type(error)) as raised:
        open_stream(router, typed("generate", REQUEST)) if where == "prime" else complete(router,
            typed("generate", REQUEST))
    assert raised.value is error
    assert (a.calls, b.calls) == (1, 0)
    assert in_flight(router) == [0, 0]
    assert failures(router) == [counted, 0]


@pytest.mark.parametrize("where", ["call", "prime"])
def test_a_model_one_backend_lacks_is_served_by_another(where: str) -> None:
    a = StubBackend("a", ("prime", ModelNotFound()) if where == "prime" else ModelNotFound())
    b = StubBackend("b")
    router = router_of(a, b)
    request = typed("generate", REQUEST)
    answer = open_stream(router, request) if where == "prime" else complete(router, request)
    assert (a.calls, b.calls) == (1, 1) and failures(router) == [0, 0]
    if where == "prime":
        answer.close()
    # Until its next probe, a is no candidate for that model; then it is again.
    assert [n.url for n in router.pool.candidates(request.model)] == ["http://b:11434"]
    router.pool.probed(router.pool.nodes[0], Probe([{"id": "m"}], {"m"}))
    assert "http://a:11434" in [n.url for n in router.pool.candidates(request.model)]


def test_a_model_no_backend_serves_is_a_404() -> None:
    router = router_of(StubBackend("a", ModelNotFound()), StubBackend("b", ModelNotFound()))
    with pytest.raises(ModelNotFound):
        complete(router, typed("generate", REQUEST))


def test_max_attempts_bounds_the_backends_tried() -> None:
    backends = [StubBackend(name, BackendUnavailable()) for name in "abcd"]
    router = router_of(*backends, max_attempts=2)
    with pytest.raises(BackendUnavailable):
        complete(router, typed("generate", REQUEST))
    assert sum(b.calls for b in backends) == 2
    assert backends[0].calls == 1


def test_the_last_error_is_raised_when_every_backend_failed() -> None:
    router = router_of(StubBackend("a", BackendBusy()), StubBackend("b", BackendTimeout()))
    pytest.raises(BackendTimeout, complete, router, typed("generate", REQUEST))
    assert in_flight(router) == [0, 0]


def test_no_retry_past_the_deadline() -> None:
    def slow_failure() -> None:
        time.sleep(0.15)
        raise BackendUnavailable()

    a, b = StubBackend("a", slow_failure), StubBackend("b")
    router = router_of(a, b, total=0.1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        complete(router, typed("generate", REQUEST))
    assert b.calls == 0
    assert a.deadlines[0] == pytest.approx(started + 0.1, abs=0.05)


@pytest.mark.parametrize(("error", "opens"), [(BackendUnavailable(), True),
                                               (BackendError("500"), True),
                                               (BackendBusy(), False),
                                               (BackendRejected(), False),
                                               (BackendFailedRequest("bad schema"), False)],
                         ids=["unavailable", "error", "busy", "rejected", "failed-request"])
def test_breaker_counts_unhealthy_errors_only(error: GatewayError, opens: bool) -> None:
    a = StubBackend("a", error, error)
    router = router_of(a, breaker_failures=2, breaker_cooldown=60)
    for _ in range(2):
        with pytest.raises(type(error)):
            complete(router, typed("generate", REQUEST))
    assert failures(router) == [2 if opens else 0]
    if opens:
        with pytest.raises(NoBackendAvailable) as raised:
            complete(router, typed("generate", REQUEST))
        assert raised.value.headers == {"Retry-After": "60"}
    else:
        assert complete(router, typed("generate", REQUEST)).text == "a"
    assert a.calls == (2 if opens else 3)


def test_unexpected_exceptions_free_the_slot() -> None:
    router = router_of(StubBackend("a", KeyError("choices")), max_concurrency=1)
    with pytest.raises(KeyError):
        complete(router, typed("generate", REQUEST))
    assert in_flight(router) == [0]
    assert complete(router, typed("generate", REQUEST)).text == "a"


@pytest.mark.parametrize(("finished", "error", "failures_after", "loaded"), [
    (True, None, 0, True), (False, "backend_stream_broken", 2, False),
    (False, "backend_timeout", 2, False), (False, "backend_error", 2, False),
    (False, "client_left", 1, False), (False, None, 1, False)],
    ids=["finished", "broken", "timeout", "error", "client-left", "closed-early"])
def test_closing_a_stream_settles_its_slot(finished: bool, error: str | None,
                                          failures_after: int, loaded: bool) -> None:
    router = router_of(StubBackend("a"), StubBackend("b"))
    a = router.pool.nodes[0]
    stream: Any = open_stream(router, typed("generate", REQUEST))
    assert (stream.text, a.in_flight) == ("a", 1)
    a.loaded, a.failures = frozenset(), 1
    stream.finished, stream.error, stream.error_message = finished, error, "why"
    stream.close()
    stream.close()
    assert a.in_flight == 0
    assert a.failures == failures_after
    assert ("m" in a.loaded) is loaded
    assert a.last_error == ("why" if failures_after == 2 else None)


def test_a_completion_marks_the_model_loaded() -> None:
    router = router_of(StubBackend("a", BackendUnavailable()), StubBackend("b"))
    complete(router, typed("generate", {"model": "new:latest", "prompt": "x"}))
    b = router.pool.nodes[1]
    assert {"new", "new:latest"} <= b.loaded and b.failures == 0


def test_list_models_merges_and_dedupes_from_closed_circuits() -> None:
    d = StubBackend("d", models=["open-circuit"])
    router = router_of(StubBackend("a", models=["x", "y"]), StubBackend("b", BackendTimeout()),
                       StubBackend("c", models=["y", "z"]), d, breaker_failures=1)
    router.pool.failed(router.pool.nodes[3], "backend_unavailable", "down")
    models = router.list_models()  # a fresh pool asks in order: a, b, c
    assert {m["id"]: m["from"] for m in models} == {"x": "a", "y": "a", "z": "c"}
    assert len(models) == 3 and d.calls == 0


def test_list_models_raises_only_when_every_backend_fails() -> None:
    router = router_of(StubBackend("a", BackendUnavailable()), StubBackend("b", BackendTimeout()))
    with pytest.raises((BackendUnavailable, BackendTimeout)):
        router.list_models()
    empty_but_up = router_of(StubBackend("a", models=[]), StubBackend("b", BackendTimeout()))
    assert empty_but_up.list_models() == []


def test_list_models_with_every_circuit_open_is_a_503() -> None:
    router = router_of(StubBackend("a", models=["x"]), breaker_failures=1)
    router.pool.failed(router.pool.nodes[0], "backend_unavailable", "down")
    with pytest.raises(NoBackendAvailable):
        router.list_models()


def up(url: str) -> float | None:
    return REGISTRY.get_sample_value("gateway_backend_up", {"backend": url})


def test_probe_all_updates_health_and_models() -> None:
    a, b = StubBackend("a", models=["x"]), StubBackend("b", BackendUnavailable("refused"))
    router = router_of(a, b, breaker_failures=1, breaker_cooldown=60)
    router.pool.nodes[0].failures, router.pool.nodes[0].open_until = 5, 1e12
    statuses = router.probe_all()
    assert [(s["url"], s["ok"], s["circuit"]) for s in statuses] == [
        ("http://a:11434", True, "closed"), ("http://b:11434", False, "open")]
    assert (statuses[0]["models"], statuses[0]["loaded"], statuses[0]["version"]) == (
        ["x"], ["m"], "1.0")
    assert statuses[1]["error"] == "refused"
    assert (up("http://a:11434"), up("http://b:11434")) == (1.0, 0.0)


# --- real streams: OllamaBackend against FakeOllama --------------------------------------

@pytest.fixture
def second_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(tokens=4) as fake:
        yield fake


def real_router(*urls: str) -> Router:
    timeouts = Timeouts(connect=1.0, first_token=5.0, between_tokens=5.0, total=30.0)
    pool = BackendPool([OllamaBackend(url, timeouts=timeouts, pool_size=2) for url in urls])
    pool.nodes[0].loaded = frozenset({"sim"})  # tried first
    return Router(pool, timeouts=timeouts)


@pytest.mark.parametrize("first", ["busy", "down"])
def test_real_stream_fails_over(fake_ollama: FakeOllama, second_ollama: FakeOllama,
                                first: str) -> None:
    fake_ollama.fail_status = 503
    router = real_router(fake_ollama.url if first == "busy" else
                         f"http://127.0.0.1:{free_port()}", second_ollama.url)
    stream = open_stream(router, typed("generate", {"model": "sim", "prompt": "hi"}))
    assert stream.backend == second_ollama.url
    assert list(stream) == [f" tok{i}" for i in range(4)]
    stream.close()
    a, b = router.pool.nodes
    assert (a.in_flight, b.in_flight, a.failures, b.failures) == (
        0, 0, 0 if first == "busy" else 1, 0)
    assert "sim" in b.loaded


def test_real_stream_broken_after_its_first_token_is_not_retried(
        fake_ollama: FakeOllama, second_ollama: FakeOllama) -> None:
    router = real_router(fake_ollama.url, second_ollama.url)
    stream = open_stream(router, typed("generate", {"model": "sim",
                                                    "prompt": "[[sim:die-after=2]]"}))
    pieces: list[str] = []
    with pytest.raises(BackendStreamBroken):
        pieces.extend(stream)
    stream.close()
    assert pieces == [" tok0", " tok1"]
    assert second_ollama.stats["requests"] == 0
    a = router.pool.nodes[0]
    assert (a.in_flight, a.failures, a.last_error) == (0, 1, BackendStreamBroken.message)
