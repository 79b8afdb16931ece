"""Policy: default model, model-list cache, readiness."""

from __future__ import annotations

from typing import Any

import pytest

from flask_inference_gateway.core.errors import BackendUnavailable
from flask_inference_gateway.core.types import (
    Completion,
    GenerationRequest,
    Op,
    Options,
    Probe,
    Timeouts,
    Usage,
)
from flask_inference_gateway.routing.pool import BackendPool
from flask_inference_gateway.routing.router import Router
from flask_inference_gateway.security.keys import Principal
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

    def __init__(self, events: list[str]) -> None:
        self.events, self.finished, self.pieces, self.keep_text = events, True, 2, False
        self.usage = Usage(3, 2)

    def close(self) -> None:
        self.events.append("stream closed")

    def outcome(self) -> str:
        return "outcome"


class RecordingRouter:
    """Opens RecordingStreams and notes when their slot is settled."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def open_stream(self, request: GenerationRequest, gone: Any) -> Any:
        from flask_inference_gateway.routing.router import RoutedStream

        node = BackendPool([StubBackend()]).nodes[0]  # type: ignore[list-item]
        return RoutedStream(node, RecordingStream(self.events), request.model)  # type: ignore[arg-type]

    def settle(self, routed: Any) -> None:
        self.events.append("slot settled")


class RecordingLedger:
    """Notes stream slots given back and tokens charged."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def check_tokens(self, principal: Principal) -> None:
        pass

    def open_stream(self, principal: Principal) -> Any:
        return lambda: self.events.append("key slot released")

    def charge(self, principal: Principal, tokens: int) -> None:
        self.events.append(f"charged {tokens}")


def test_closing_a_generation_settles_once_in_a_fixed_order() -> None:
    events: list[str] = []
    svc = InferenceService(RecordingRouter(events), default_model="m",  # type: ignore[arg-type]
                           models_cache_seconds=0, ledger=RecordingLedger(events))  # type: ignore[arg-type]
    generation = svc.stream(GenerationRequest(Op.GENERATE, Options(max_tokens=8), prompt="x"),
                            Principal("tester"))
    assert events == []
    assert generation.close() == "outcome"
    generation.close()
    assert events == ["stream closed", "slot settled", "key slot released", "charged 5"]
