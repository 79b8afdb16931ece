"""Policy between the views and the backend: defaults, who may use what, budgets, caching."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from app.backend import Completion, OllamaBackend, TokenStream, Usage
from app.errors import Forbidden, GatewayError
from app.observability import metrics
from app.observability.context import observe
from app.security.keys import Principal
from app.security.usage import UsageLedger

log = logging.getLogger(__name__)


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


def estimate_prompt_tokens(request: dict[str, Any]) -> int:
    """Estimate a prompt's tokens (about 4 characters each) for a stream cut before its end."""
    text = request.get("prompt") or "".join(m["content"] for m in request.get("messages", []))
    return max(1, (len(text) + len(request.get("system") or "")) // 4)


class InferenceService:
    """Serve inference requests from one backend, applying the gateway's policy."""

    def __init__(self, backend: OllamaBackend, *, default_model: str,
                 models_cache_seconds: float, ledger: UsageLedger | None = None,
                 log_prompts: bool = False) -> None:
        self.backend = backend
        self.default_model = default_model
        self.ledger = ledger
        self.log_prompts = log_prompts
        self.models_cache_seconds = models_cache_seconds
        self._models: list[dict[str, Any]] = []
        self._models_expire = 0.0

    def _admit(self, request: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """Fill in the default model; refuse a model or budget the key does not have."""
        if not request.get("model"):
            request["model"] = self.default_model
        if not principal.may_use(request["model"]):
            raise Forbidden(f"This API key may not use the model '{request['model']}'.",
                            allowed_models=sorted(principal.models or ()))
        if self.ledger:
            self.ledger.check_tokens(principal)
        observe(model=request["model"], backend=self.backend.base_url)
        if self.log_prompts:
            observe(prompt=request.get("messages") or request.get("prompt"))
        return request

    def complete(self, kind: str, request: dict[str, Any], principal: Principal) -> Completion:
        """Run a ``generate`` or ``chat`` request to its end."""
        completion = self.backend.complete(kind, self._admit(request, principal))
        observe(usage=completion.usage)
        if self.log_prompts:
            observe(output=completion.text)
        if self.ledger:
            self.ledger.charge(principal, completion.usage.prompt_tokens
                               + completion.usage.completion_tokens)
        return completion

    def stream(self, kind: str, request: dict[str, Any], principal: Principal) -> TokenStream:
        """Start a streamed ``generate`` or ``chat`` request; its usage is charged on close."""
        self._admit(request, principal)
        if not self.ledger:
            return self._observed(self.backend.stream(kind, request))
        release = self.ledger.open_stream(principal)
        try:
            stream = self.backend.stream(kind, request)
        except BaseException:
            release()
            raise
        ledger, prompt_estimate = self.ledger, estimate_prompt_tokens(request)

        def settle(closed: TokenStream) -> None:
            usage = closed.usage if closed.finished else Usage(prompt_estimate, closed.pieces)
            try:
                release()
                ledger.charge(principal, usage.prompt_tokens + usage.completion_tokens)
            except GatewayError as exc:  # the stream is over: log what could not be settled
                log.warning("could not charge %s for a stream: %s", principal.name, exc.message)

        stream.on_close(settle)
        return self._observed(stream)

    def _observed(self, stream: TokenStream) -> TokenStream:
        """Let the request's record follow ``stream`` to its end; count it while open."""
        stream.keep_text = self.log_prompts
        observe(stream=stream)
        metrics.STREAMS.inc()
        stream.on_close(lambda _stream: metrics.STREAMS.dec())
        return stream

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
