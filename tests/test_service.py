"""Policy: default model, model-list cache, readiness, token reservations and settling."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flask_inference_gateway.core.errors import BackendError, BackendUnavailable, RateLimited
from flask_inference_gateway.core.types import (
    Completion,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Op,
    Options,
    Probe,
    Timeouts,
    Usage,
)
from flask_inference_gateway.routing.pool import BackendPool
from flask_inference_gateway.routing.router import RoutedStream, Router
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.security.usage import WINDOW, MemoryCounters, UsageLedger
from flask_inference_gateway.service import InferenceService


class FinishedStream:
    """A stream whose whole answer is already there."""

    def __init__(self, model: str) -> None:
        self.model, self.finished, self.usage, self.pieces = model, True, Usage(1, 1), 1

    def prime(self) -> None:
        pass

    def collect(self, gone: Any = None) -> Completion:
        return Completion(self.model, "text", "stop", self.usage)

    def close(self) -> None:
        pass

    def outcome(self) -> None:
        return None


class StubBackend:
    kind = "ollama"
    base_url = "http://gpu:11434"
    timeouts = Timeouts()

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.down = False

    def stream(self, request: GenerationRequest, deadline: float | None = None) -> Any:
        self.calls.append((request.op.value, request))
        return FinishedStream(request.model)

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        self.calls.append(("tags", None))
        return [{"id": "llama3.2:latest", "object": "model", "created": 0,
                 "owned_by": "ollama", "details": {}}]

    def probe(self, timeout: float) -> Probe:
        if self.down:
            raise BackendUnavailable()
        return Probe(self.list_models(), set(), "0.12.0")


def service(cache: float = 10.0) -> tuple[InferenceService, StubBackend]:
    backend = StubBackend()
    router = Router(BackendPool([backend]), timeouts=Timeouts())  # type: ignore[list-item]
    return InferenceService(router, default_model="llama3.2",
                            models_cache_seconds=cache), backend


@pytest.mark.parametrize(("request_model", "sent"), [(None, "llama3.2"), ("qwen", "qwen")],
                         ids=["default", "explicit"])
def test_default_model(request_model: str | None, sent: str) -> None:
    svc, backend = service()
    request = GenerationRequest(Op.GENERATE, Options(max_tokens=8), prompt="x",
                                model=request_model or "")
    svc.complete(request, Principal("tester"))
    assert backend.calls[0][1].model == sent


@pytest.mark.parametrize(("cache", "fetches"), [(10.0, 1), (0.0, 3)], ids=["cached", "off"])
def test_models_are_cached(cache: float, fetches: int) -> None:
    svc, backend = service(cache)
    for _ in range(3):
        models = svc.models()
    assert [c for c in backend.calls if c[0] == "tags"] == [("tags", None)] * fetches
    assert models[0]["id"] == "llama3.2:latest"


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_readiness(down: bool) -> None:
    svc, backend = service()
    backend.down = down
    ready, statuses = svc.readiness()
    assert ready is not down
    assert statuses[0]["url"] == "http://gpu:11434"
    assert statuses[0]["kind"] == "ollama"
    assert ("error" in statuses[0]) is down
    assert statuses[0]["models"] == ([] if down else ["llama3.2", "llama3.2:latest"])


class RecordingStream:
    """A primed stream stand-in that notes when it is closed."""

    def __init__(self, events: list[str], finished: bool = True) -> None:
        self.events, self.finished, self.pieces, self.keep_text = events, finished, 2, False
        self.usage = Usage(3, 2) if finished else Usage()

    def collect(self, gone: Any = None) -> Completion:
        if not self.finished:  # the backend dropped the stream after two pieces
            raise BackendError("The backend dropped the stream.")
        return Completion("m", "text", "stop", self.usage)

    def close(self) -> None:
        self.events.append("stream closed")

    def outcome(self) -> str:
        return "outcome"


class RecordingRouter:
    """Opens RecordingStreams (or fails with ``fail``), notes requests and slots settled."""

    def __init__(self, events: list[str], finished: bool = True,
                 fail: BaseException | None = None) -> None:
        self.events, self.finished, self.fail = events, finished, fail
        self.requests: list[Any] = []

    def open_stream(self, request: GenerationRequest, gone: Any, caller: Any = None) -> Any:
        self.requests.append(request)
        if self.fail:
            raise self.fail
        return RoutedStream(None, RecordingStream(self.events, self.finished),  # type: ignore[arg-type]
                            request.model)

    def embed(self, request: EmbeddingRequest, gone: Any, caller: Any = None) -> Embeddings:
        self.requests.append(request)
        if self.fail:
            raise self.fail
        return Embeddings(request.model, [[0.0]] * len(request.inputs), 7)

    def settle(self, routed: Any) -> None:
        self.events.append("slot settled")


class RecordingReservation:
    """Notes what it is settled with."""

    def __init__(self, events: list[str], max_tokens: int) -> None:
        self.events, self.max_tokens = events, max_tokens

    def settle(self, used: int) -> None:
        self.events.append(f"settled {used}")


class RecordingLedger:
    """Notes stream slots given back and reservations settled."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def reserve(self, principal: Principal, prompt: int, max_tokens: int = 0) -> Any:
        self.events.append(f"reserved {prompt}+{max_tokens}")
        return RecordingReservation(self.events, max_tokens)

    def open_stream(self, principal: Principal) -> Any:
        return lambda: self.events.append("key slot released")


def test_closing_a_generation_settles_once_in_a_fixed_order() -> None:
    events: list[str] = []
    svc = InferenceService(RecordingRouter(events), default_model="m",  # type: ignore[arg-type]
                           models_cache_seconds=0, ledger=RecordingLedger(events))  # type: ignore[arg-type]
    generation = svc.stream(GenerationRequest(Op.GENERATE, Options(max_tokens=8), prompt="x"),
                            Principal("tester"))
    assert events == ["reserved 1+8"]
    assert generation.close() == "outcome"
    generation.close()
    assert events == ["reserved 1+8", "stream closed", "slot settled", "key slot released",
                      "settled 5"]


def budgeted(tokens: int = 100, streams: int = 0, max_tokens: int = 4096, finished: bool = True,
             fail: BaseException | None = None
             ) -> tuple[InferenceService, RecordingRouter, MemoryCounters]:
    """Return a service with a real in-memory ledger, its router and its counters."""
    counters = MemoryCounters()
    ledger = UsageLedger(counters, tokens_per_minute=tokens, max_streams=streams, fail_open=True)
    router = RecordingRouter([], finished, fail)
    svc = InferenceService(router, default_model="m", models_cache_seconds=0,  # type: ignore[arg-type]
                           ledger=ledger, max_tokens=max_tokens)
    return svc, router, counters


def charged(counters: MemoryCounters) -> int:
    """Return what the tester's key has used and reserved in this minute."""
    return counters.get(f"gw:tpm:tester:{int(time.time()) // WINDOW}")


def generate(max_tokens: int, prompt: str = "four chars") -> GenerationRequest:
    return GenerationRequest(Op.GENERATE, Options(max_tokens=max_tokens), prompt=prompt)


def test_a_stream_holds_its_worst_case_until_it_settles_to_its_usage() -> None:
    svc, _router, counters = budgeted()
    generation = svc.stream(generate(40), Principal("tester"))
    assert charged(counters) == 2 + 40  # the prompt's estimate and max_tokens, reserved
    generation.close()
    assert charged(counters) == 5  # the backend's usage: 3 + 2


@pytest.mark.parametrize("way", ["stream", "complete"])
def test_an_answer_cut_short_is_charged_its_estimate_and_pieces(way: str) -> None:
    svc, _router, counters = budgeted(finished=False)
    if way == "stream":
        svc.stream(generate(40), Principal("tester")).close()  # the client left
    else:
        with pytest.raises(BackendError):
            svc.complete(generate(40), Principal("tester"))
    assert charged(counters) == 2 + 2  # prompt estimate + 2 pieces relayed; the rest went back


def test_a_request_larger_than_the_budget_runs_clamped_to_what_is_left() -> None:
    svc, router, counters = budgeted(tokens=100)
    svc.stream(generate(30), Principal("tester")).close()  # uses 5
    generation = svc.stream(generate(4096, prompt="x" * 40), Principal("tester"))
    assert router.requests[-1].options.max_tokens == 100 - 5 - 10
    assert charged(counters) == 100
    with pytest.raises(RateLimited):
        svc.stream(generate(1), Principal("tester"))
    generation.close()
    assert charged(counters) == 10


def test_a_request_without_max_tokens_reserves_the_gateway_maximum() -> None:
    svc, router, counters = budgeted(tokens=1000, max_tokens=300)
    generation = svc.stream(generate(0), Principal("tester"))
    assert router.requests[-1].options.max_tokens == 300
    assert charged(counters) == 302
    generation.close()


def test_a_refusal_reaches_no_backend() -> None:
    svc, router, counters = budgeted(tokens=100)
    svc.stream(generate(60), Principal("tester"))
    with pytest.raises(RateLimited) as caught:
        svc.complete(generate(60), Principal("tester"))
    assert "38 tokens left" in caught.value.message and "Retry-After" in caught.value.headers
    assert len(router.requests) == 1 and charged(counters) == 62


@pytest.mark.parametrize("way", ["stream", "complete", "embed"])
def test_a_request_that_never_starts_gives_its_reservation_back(way: str) -> None:
    svc, _router, counters = budgeted(fail=BackendUnavailable())
    principal = Principal("tester")
    with pytest.raises(BackendUnavailable):
        if way == "embed":
            svc.embed(EmbeddingRequest(("some text",)), principal)
        else:
            getattr(svc, way)(generate(40), principal)
    assert charged(counters) == 0


def test_a_stream_over_the_stream_cap_gives_its_reservation_back() -> None:
    svc, _router, counters = budgeted(streams=1)
    first = svc.stream(generate(40), Principal("tester"))
    with pytest.raises(RateLimited) as caught:
        svc.stream(generate(40), Principal("tester"))
    assert caught.value.details["limit"] == "streams"
    assert charged(counters) == 42
    first.close()
    assert charged(counters) == 5


def test_embeddings_reserve_their_estimate_and_settle_to_the_reported_count() -> None:
    svc, router, counters = budgeted(tokens=100)
    embeddings = svc.embed(EmbeddingRequest(("a" * 40, "b" * 40)), Principal("tester"))
    assert embeddings.prompt_tokens == 7
    assert charged(counters) == 7
    with pytest.raises(RateLimited):
        svc.embed(EmbeddingRequest(("c" * 400,)), Principal("tester"))  # 100 > 93 left
    assert len(router.requests) == 1
