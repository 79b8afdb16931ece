"""Policy between the views and the backend: defaults, who may use what, budgets, caching."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from flask import has_request_context
from flask import request as http_request

from app.backend import Completion, TokenStream, Usage
from app.backend.base import Embeddings
from app.backend.router import Router, never_gone
from app.errors import Forbidden, GatewayError
from app.observability import metrics
from app.observability.context import observe
from app.security.keys import Principal
from app.security.usage import UsageLedger

log = logging.getLogger(__name__)


def client_watch() -> Callable[[], bool]:
    """Return a check of whether the current request's client has closed its connection."""
    sock = http_request.environ.get("gunicorn.sock") if has_request_context() else None
    if sock is None:
        return never_gone

    def gone() -> bool:
        # Peek through a duplicate, non-blocking handle: the connection's own
        # socket belongs to the greenlet serving it, and waiting on it here
        # would collide with that greenlet (and select() fails past fd 1024).
        try:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as probe:
                probe.setblocking(False)
                # Nothing to read and not readable: still there. Closed: b"".
                return probe.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


def estimate_prompt_tokens(request: dict[str, Any]) -> int:
    """Estimate a prompt's tokens (about 4 characters each) for a stream cut before its end."""
    text = request.get("prompt") or "".join(m["content"] for m in request.get("messages", []))
    return max(1, (len(text) + len(request.get("system") or "")) // 4)


class InferenceService:
    """Serve inference requests from the backends, applying the gateway's policy."""

    def __init__(self, router: Router, *, default_model: str,
                 models_cache_seconds: float, ledger: UsageLedger | None = None,
                 log_prompts: bool = False) -> None:
        self.router = router
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
        observe(model=request["model"])
        if self.log_prompts:
            observe(prompt=request.get("messages") or request.get("prompt"))
        return request

    def complete(self, kind: str, request: dict[str, Any], principal: Principal) -> Completion:
        """Run a ``generate`` or ``chat`` request to its end."""
        completion = self.router.complete(kind, self._admit(request, principal), client_watch())
        observe(usage=completion.usage)
        if self.log_prompts:
            observe(output=completion.text)
        if self.ledger:
            self.ledger.charge(principal, completion.usage.prompt_tokens
                               + completion.usage.completion_tokens)
        return completion

    def embed(self, request: dict[str, Any], principal: Principal) -> Embeddings:
        """Embed ``request["input"]`` (a list of strings) with ``request["model"]``."""
        self._admit(request, principal)
        embeddings = self.router.embed(request["model"], request["input"], client_watch())
        observe(usage=Usage(embeddings.prompt_tokens, 0))
        if self.ledger:
            self.ledger.charge(principal, embeddings.prompt_tokens)
        return embeddings

    def stream(self, kind: str, request: dict[str, Any], principal: Principal) -> TokenStream:
        """Start a streamed ``generate`` or ``chat`` request; its usage is charged on close."""
        self._admit(request, principal)
        if not self.ledger:
            return self._observed(self.router.stream(kind, request, client_watch()))
        release = self.ledger.open_stream(principal)
        try:
            stream = self.router.stream(kind, request, client_watch())
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
            self._models = self.router.list_models()
            self._models_expire = now + self.models_cache_seconds
        return self._models

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        """Probe every backend now; return whether any can serve, and each one's status."""
        statuses = self.router.probe_all()
        return any(status["ok"] for status in statuses), statuses
