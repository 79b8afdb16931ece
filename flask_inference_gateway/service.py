"""Policy between the API and routing: defaults, who may use what, budgets, caching.

No Flask here: the API hands in a typed request, the caller's principal and a
check of whether the client is still there (``worker.client_probe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
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
from flask_inference_gateway.security.usage import Reservation, UsageLedger, estimate_tokens
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
                 max_tokens: int = 4096, log_prompts: bool = False) -> None:
        self.router = router
        self.default_model = default_model
        self.ledger = ledger
        self.max_tokens = max_tokens  # GATEWAY_MAX_TOKENS: a request's worst case without one
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

    def _admit(self, request: Request, principal: Principal) -> tuple[Request, Reservation]:
        """Fill in the default model; refuse a model the key may not use; reserve its tokens."""
        request = request.with_model(self.resolve_model(request.model, principal))
        request, reservation = self._reserve(request, principal)
        context.note_model(request.model)
        if self.log_prompts and isinstance(request, GenerationRequest):
            context.note_prompt(request.loggable_prompt())
        return request, reservation

    def _reserve(self, request: Request, principal: Principal) -> tuple[Request, Reservation]:
        """Reserve the request's worst case in the key's budget (429 when it does not fit).

        A generation larger than the whole budget gets its max_tokens clamped
        to what the reservation holds, so it never spends more than that.
        """
        if self.ledger is None:
            return request, Reservation(0)
        if isinstance(request, EmbeddingRequest):
            return request, self.ledger.reserve(principal, estimate_tokens(request.inputs))
        wanted = request.options.max_tokens if request.options.max_tokens > 0 else self.max_tokens
        reservation = self.ledger.reserve(principal, request.estimate_prompt_tokens(), wanted)
        if reservation.max_tokens != request.options.max_tokens:
            request = replace(request, options=replace(request.options,
                                                       max_tokens=reservation.max_tokens))
        return request, reservation

    def complete(self, request: GenerationRequest, principal: Principal,
                 gone: Callable[[], bool] = never_gone) -> Completion:
        """Run a generation to its end: streamed from the backend, answered whole."""
        request, reservation = self._admit(request, principal)
        settle = self._charger(principal, _release_nothing, reservation,
                               request.estimate_prompt_tokens())
        try:
            routed = self.router.open_stream(request, gone, principal.caller())
        except BaseException:
            reservation.settle(0)  # no token came back: the whole reservation goes back
            raise
        with Generation(routed, self.router, settle) as whole:
            completion = whole.stream.collect(gone)
        context.note_usage(completion.usage)
        if self.log_prompts:
            context.note_output(completion.text)
        return completion

    def embed(self, request: EmbeddingRequest, principal: Principal,
              gone: Callable[[], bool] = never_gone) -> Embeddings:
        """Embed the request's inputs."""
        request, reservation = self._admit(request, principal)
        try:
            embeddings = self.router.embed(request, gone, principal.caller())
        except BaseException:
            reservation.settle(0)
            raise
        reservation.settle(embeddings.prompt_tokens)
        context.note_usage(Usage(embeddings.prompt_tokens, 0))
        return embeddings

    def stream(self, request: GenerationRequest, principal: Principal,
               gone: Callable[[], bool] = never_gone) -> Generation:
        """Start and prime a streamed generation; the caller owns (closes) what it returns."""
        request, reservation = self._admit(request, principal)
        if self.log_prompts:  # the log takes the text: decode every token
            request = replace(request, passthrough=None)
        release = _release_nothing
        try:
            if self.ledger:
                release = self.ledger.open_stream(principal)
            routed = self.router.open_stream(request, gone, principal.caller())
        except BaseException:
            reservation.settle(0)  # no token came back: the whole reservation goes back
            release()
            raise
        routed.stream.keep_text = self.log_prompts
        metrics.STREAMS.inc()
        charge = self._charger(principal, release, reservation, request.estimate_prompt_tokens())

        def settle(stream: TokenStream) -> None:
            try:
                charge(stream)
            finally:
                metrics.STREAMS.dec()

        return Generation(routed, self.router, settle)

    def _charger(self, principal: Principal, release: Callable[[], None],
                 reservation: Reservation, prompt_estimate: int) -> Callable[[TokenStream], None]:
        """Return the settling of a closed stream: its slot back, then its reservation.

        The reservation keeps what the stream used and gives back the rest: the
        backend's usage when it finished, else (cut short) the prompt's estimate
        and the pieces relayed.
        """
        if self.ledger is None:
            return nothing_to_settle

        def settle(stream: TokenStream) -> None:
            usage = stream.usage if stream.finished else Usage(prompt_estimate, stream.pieces)
            try:
                release()
            except GatewayError as exc:  # the stream is over: log what could not be settled
                log.warning("could not give back a stream slot of %s: %s", principal.name,
                            exc.message)
            finally:
                reservation.settle(usage.total)

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
