"""A backend as routing sees it: the adapter's protocol, and what this worker knows of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from flask_inference_gateway.core.types import (
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Probe,
    Timeouts,
)
from flask_inference_gateway.upstream.stream import TokenStream


class Backend(Protocol):
    """What routing needs of an upstream adapter (OllamaBackend, OpenAIBackend)."""

    kind: str
    base_url: str
    timeouts: Timeouts

    def stream(self, request: GenerationRequest,
               deadline: float | None = None) -> TokenStream: ...

    def embed(self, request: EmbeddingRequest,
              deadline: float | None = None) -> Embeddings: ...

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def probe(self, timeout: float) -> Probe: ...


def aliases(name: str) -> set[str]:
    """Return the names a model answers to: Ollama's 'llama3.2:latest' is also 'llama3.2'."""
    return {name, name.removesuffix(":latest")}


@dataclass(eq=False)
class Node:
    """One backend and what this worker knows of it."""

    backend: Backend
    in_flight: int = 0
    failures: int = 0  # consecutive
    open_until: float = 0.0  # circuit open (no traffic) until this time.monotonic()
    models: frozenset[str] | None = None  # None: not known yet
    loaded: frozenset[str] = frozenset()
    model_list: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""
    last_error: str | None = None
    busy_until: float = 0.0  # it answered 503: tried last until this time.monotonic()
    missing: frozenset[str] = frozenset()  # models it answered 404 for since its last probe

    @property
    def url(self) -> str:
        """Return the backend's base URL."""
        return self.backend.base_url

    def must_swap(self, model: str) -> bool:
        """Return whether serving ``model`` would push another model out of memory."""
        return bool(self.loaded) and model not in self.loaded

    def serves(self, model: str) -> bool | None:
        """Return whether the backend lists ``model`` (None: its list is not known)."""
        if model in self.missing:
            return False
        return None if self.models is None else model in self.models

    def learn(self, probe: Probe) -> None:
        """Take the models and residency a probe found."""
        self.model_list = probe.models
        self.models = frozenset(a for m in probe.models for a in aliases(m["id"]))
        self.loaded = frozenset(a for name in probe.loaded for a in aliases(name))
        self.version = probe.version or self.version
        self.missing = frozenset()

    def status(self, now: float) -> dict[str, Any]:
        """Return this backend's state for /readyz."""
        state = "open" if now < self.open_until else "closed"
        body: dict[str, Any] = {"url": self.url, "kind": self.backend.kind,
                                "ok": state == "closed" and self.failures == 0,
                                "circuit": state, "in_flight": self.in_flight,
                                "models": sorted(self.models or ()),
                                "loaded": sorted(self.loaded)}
        if self.version:
            body["version"] = self.version
        if self.last_error:
            body["error"] = self.last_error
        return body
