"""Policy between the views and the backend: defaults, caching, readiness."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from app.backend import Completion, OllamaBackend, TokenStream
from app.errors import GatewayError


def created_at(modified_at: str | None) -> int:
    """Return Ollama's RFC 3339 ``modified_at`` as Unix time (0 when unreadable)."""
    try:
        return int(datetime.fromisoformat(modified_at or "").timestamp())
    except ValueError:
        return 0


def model_info(entry: dict[str, Any]) -> dict[str, Any]:
    """Return one /api/tags entry as an OpenAI-style model object."""
    details = dict(entry.get("details") or {})
    for key in ("size", "digest", "modified_at"):
        if key in entry:
            details[key] = entry[key]
    return {"id": entry.get("name") or entry.get("model", ""), "object": "model",
            "created": created_at(entry.get("modified_at")), "owned_by": "ollama",
            "details": details}


class InferenceService:
    """Serve inference requests from one backend, applying the gateway's policy."""

    def __init__(self, backend: OllamaBackend, *, default_model: str,
                 models_cache_seconds: float) -> None:
        self.backend = backend
        self.default_model = default_model
        self.models_cache_seconds = models_cache_seconds
        self._models: list[dict[str, Any]] = []
        self._models_expire = 0.0

    def _with_model(self, request: dict[str, Any]) -> dict[str, Any]:
        if not request.get("model"):
            request["model"] = self.default_model
        return request

    def complete(self, kind: str, request: dict[str, Any]) -> Completion:
        """Run a ``generate`` or ``chat`` request to its end."""
        return self.backend.complete(kind, self._with_model(request))

    def stream(self, kind: str, request: dict[str, Any]) -> TokenStream:
        """Start a streamed ``generate`` or ``chat`` request."""
        return self.backend.stream(kind, self._with_model(request))

    def models(self) -> list[dict[str, Any]]:
        """Return the served models, reusing a recent answer."""
        now = time.monotonic()
        if now >= self._models_expire:
            self._models = [model_info(m) for m in self.backend.list_models()]
            self._models_expire = now + self.models_cache_seconds
        return self._models

    def readiness(self, timeout: float = 2.0) -> tuple[bool, list[dict[str, Any]]]:
        """Probe every backend; return whether all answer, and each one's status."""
        status: dict[str, Any] = {"url": self.backend.base_url}
        try:
            status["version"] = self.backend.version(timeout)
            status["ok"] = True
        except GatewayError as exc:
            status.update(ok=False, error=exc.message)
        return status["ok"], [status]
