"""Policy between the API and routing: defaults, who may use what, budgets, caching.

No Flask here: the API hands in a typed request, the caller's principal and a
check of whether the client is still there (``worker.client_probe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask_inference_gateway.core.errors import Forbidden, GatewayError
from flask_inference_gateway.core.types import (
    Completion,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    StreamOutcome,
    Usage,
    never_gone,
)
from flask_inference_gateway.observability import context, metrics
from flask_inference_gateway.routing.router import RoutedStream, Router
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.security.usage import UsageLedger
from flask_inference_gateway.upstream.stream import TokenStream

log = logging.getLogger(__name__)
Request = TypeVar("Request", GenerationRequest, EmbeddingRequest)


class Generation:
    """A started stream, and what is settled when its owner closes it.

    The owner (the API's relay for a stream, ``complete`` for a whole answer)
    reads ``stream`` and calls ``close`` once, in a ``finally``; closing
    settles, in this order: the upstream response (an unfinished one is
    aborted, so the GPU stops), the backend's health and slot, then
    ``settle``: the key's stream slot, its token charge and the open-streams
    gauge, as the request holds them.
    """

    def __init__(self, routed: RoutedStream, router: Router,
                 settle: Callable[[TokenStream], None]) -> None:
        self.stream = routed.stream
        self._routed = routed
        self._router = router
        self._settle = settle
        self._closed = False

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> StreamOutcome:
        """Close the stream and settle everything it held; return how it ended."""
        if not self._closed:
            self._closed = True
            try:
                self.stream.close()
            finally:
                try:
                    self._router.settle(self._routed)
                finally:
                    self._settle(self.stream)
        return self.stream.outcome()


def nothing_to_settle(_stream: TokenStream) -> None:
    """Settle nothing: limits are off."""


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

    def resolve_model(self, model: str, principal: Principal) -> str:
        """Return the model to run (the default when none is named); refuse a forbidden one."""
        model = model or self.default_model
        if not principal.may_use(model):
            raise Forbidden(f"This API key may not use the model '{model}'.",
                            allowed_models=sorted(principal.models or ()))
        return model

    def _admit(self, request: Request, principal: Principal) -> Request:
        """Fill in the default model; refuse a model or budget the key does not have."""
        request = request.with_model(self.resolve_model(request.model, principal))
        if self.ledger:
            self.ledger.check_tokens(principal)
        context.note_model(request.model)
        if self.log_prompts and isinstance(request, GenerationRequest):
            context.note_prompt(request.loggable_prompt())
        return request

    def complete(self, request: GenerationRequest, principal: Principal,
                 gone: Callable[[], bool] = never_gone) -> Completion:
        """Run a generation to its end: streamed from the backend, answered whole."""
        request = self._admit(request, principal)
        settle = self._charger(principal, _release_nothing, request.estimate_prompt_tokens())
        with Generation(self.router.open_stream(request, gone), self.router, settle) as whole:
            completion = whole.stream.collect(gone)
        context.note_usage(completion.usage)
        if self.log_prompts:
            context.note_output(completion.text)
        return completion

    def embed(self, request: EmbeddingRequest, principal: Principal,
              gone: Callable[[], bool] = never_gone) -> Embeddings:
        """Embed the request's inputs."""
        embeddings = self.router.embed(self._admit(request, principal), gone)
        context.note_usage(Usage(embeddings.prompt_tokens, 0))
        if self.ledger:
            self.ledger.charge(principal, embeddings.prompt_tokens)
        return embeddings

    def stream(self, request: GenerationRequest, principal: Principal,
               gone: Callable[[], bool] = never_gone) -> Generation:
        """Start and prime a streamed generation; the caller owns (closes) what it returns."""
        request = self._admit(request, principal)
        release = self.ledger.open_stream(principal) if self.ledger else _release_nothing
        try:
            routed = self.router.open_stream(request, gone)
        except BaseException:
            release()
            raise
        routed.stream.keep_text = self.log_prompts
        metrics.STREAMS.inc()
        charge = self._charger(principal, release, request.estimate_prompt_tokens())

        def settle(stream: TokenStream) -> None:
            try:
                charge(stream)
            finally:
                metrics.STREAMS.dec()

        return Generation(routed, self.router, settle)

    def _charger(self, principal: Principal, release: Callable[[], None],
                 prompt_estimate: int) -> Callable[[TokenStream], None]:
        """Return the settling of a closed stream: its slot back, its tokens charged.

        A stream cut short is charged its prompt's estimate and the pieces relayed.
        """
        ledger = self.ledger
        if ledger is None:
            return nothing_to_settle

        def settle(stream: TokenStream) -> None:
            usage = stream.usage if stream.finished else Usage(prompt_estimate, stream.pieces)
            try:
                release()
                ledger.charge(principal, usage.total)
            except GatewayError as exc:  # the stream is over: log what could not be settled
                log.warning("could not charge %s for a stream: %s", principal.name, exc.message)

        return settle

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


def _release_nothing() -> None:
    """Give back no stream slot: limits are off."""
