"""Policy: default model, model-list cache, readiness."""

from __future__ import annotations

from typing import Any

import pytest

from app.backend import Completion, Usage
from app.errors import BackendUnavailable
from app.security.keys import Principal
from app.service import InferenceService, created_at, model_info


class StubBackend:
    base_url = "http://gpu:11434"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.down = False

    def complete(self, kind: str, request: dict[str, Any]) -> Completion:
        self.calls.append((kind, request))
        return Completion(request["model"], "text", "stop", Usage(1, 1))

    def list_models(self) -> list[dict[str, Any]]:
        self.calls.append(("tags", None))
        return [{"name": "llama3.2:latest", "modified_at": "2026-01-01T00:00:00Z", "size": 5,
                 "details": {"family": "llama"}}]

    def version(self, timeout: float) -> str:
        if self.down:
            raise BackendUnavailable()
        return "0.12.0"


def service(cache: float = 10.0) -> tuple[InferenceService, StubBackend]:
    backend = StubBackend()
    return InferenceService(backend, default_model="llama3.2",  # type: ignore[arg-type]
                            models_cache_seconds=cache), backend


@pytest.mark.parametrize(("request_model", "sent"), [(None, "llama3.2"), ("qwen", "qwen")],
                         ids=["default", "explicit"])
def test_default_model(request_model: str | None, sent: str) -> None:
    svc, backend = service()
    request = {"prompt": "x", **({"model": request_model} if request_model else {})}
    svc.complete("generate", request, Principal("tester"))
    assert backend.calls[0][1]["model"] == sent


@pytest.mark.parametrize(("cache", "fetches"), [(10.0, 1), (0.0, 3)], ids=["cached", "off"])
def test_models_are_cached(cache: float, fetches: int) -> None:
    svc, backend = service(cache)
    for _ in range(3):
        models = svc.models()
    assert [c for c in backend.calls if c[0] == "tags"] == [("tags", None)] * fetches
    assert models[0]["id"] == "llama3.2:latest"


def test_model_info_is_openai_shaped() -> None:
    info = model_info({"name": "m:latest", "modified_at": "2026-01-01T00:00:00Z", "size": 5,
                       "digest": "sha256:0", "details": {"family": "llama"}})
    assert info == {"id": "m:latest", "object": "model", "created": 1767225600,
                    "owned_by": "ollama",
                    "details": {"family": "llama", "size": 5, "digest": "sha256:0",
                                "modified_at": "2026-01-01T00:00:00Z"}}


@pytest.mark.parametrize("raw", [None, "", "yesterday"], ids=["none", "empty", "garbage"])
def test_unreadable_dates_are_zero(raw: str | None) -> None:
    assert created_at(raw) == 0


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_readiness(down: bool) -> None:
    svc, backend = service()
    backend.down = down
    ready, statuses = svc.readiness()
    assert ready is not down
    assert statuses[0]["url"] == "http://gpu:11434"
    assert ("error" in statuses[0]) is down
