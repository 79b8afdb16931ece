"""Send each request to a backend, failing over to another while nothing reached the client.

A connection failure, a timeout before the first token, a dropped stream
before the first token, or a 503 from one backend is retried on the next
candidate (see pool.py for the order), up to ``max_attempts`` backends and
within the total deadline. So is a 404 for the model: a backend whose model
list is not known yet (a worker just started) or out of date may lack a model
another one serves. Any other 4xx is never retried: another backend would
refuse the same request. Once the first token has been read, the stream
belongs to its backend: a later failure ends it with an error event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from flask_inference_gateway.core.errors import (
    BackendBusy,
    BackendError,
    BackendFailedRequest,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    ClientLeft,
    GatewayError,
    ModelNotFound,
)
from flask_inference_gateway.core.types import (
    ANONYMOUS,
    Caller,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Timeouts,
    never_gone,
)
from flask_inference_gateway.observability import context, metrics
from flask_inference_gateway.routing.affinity import prefix_key
from flask_inference_gateway.routing.pool import BackendPool, Node, Slot
from flask_inference_gateway.upstream.stream import TokenStream
from flask_inference_gateway.upstream.watch import ClientWatch

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that say nothing about the request itself: another backend may serve it.
RETRYABLE = (BackendUnavailable, BackendTimeout, BackendStreamBroken, BackendBusy)
# How a started stream may end that says the backend is unwell (a client leaving does not).
UNHEALTHY_STREAM_ENDS = frozenset({"backend_stream_broken", "backend_timeout",
                                   "backend_unavailable", "backend_error"})


def retry_after(error: GatewayError) -> float:
    """Return the seconds a busy backend asked for (its Retry-After; 1 when unreadable)."""
    try:
        return min(30.0, max(0.0, float(error.headers.get("Retry-After", 1))))
    except ValueError:
        return 1.0


def unhealthy(error: GatewayError) -> bool:
    """Return whether ``error`` counts against the backend's health (its circuit breaker)."""
    if isinstance(error, BackendBusy):
        return False  # busy is healthy: it is retried elsewhere, not shunned
    if isinstance(error, BackendFailedRequest):
        # The backend answered and gave its reason (Ollama answers 500 to an
        # invalid schema or template): one client's mistake, sent again and
        # again, must not open the circuit for everyone.
        return False
    return isinstance(error, BackendError) and error.status >= 500


@dataclass(eq=False)
class RoutedStream:
    """A primed stream and the backend slot it holds until ``Router.settle`` frees it."""

    slot: Slot
    stream: TokenStream
    model: str

    @property
    def node(self) -> Node:
        """Return the backend serving the stream."""
        return self.slot.node


class Router:
    """Serve requests from a pool of backends with failover and health tracking."""

    def __init__(self, pool: BackendPool, *, timeouts: Timeouts, max_attempts: int = 3,
                 probe_timeout: float = 5.0, prefix_chars: int = 4096) -> None:
        self.pool = pool
        self.timeouts = timeouts
        self.max_attempts = max_attempts
        self.probe_timeout = probe_timeout
        self.prefix_chars = prefix_chars

    def embed(self, request: EmbeddingRequest, gone: Callable[[], bool] = never_gone,
              caller: Caller = ANONYMOUS) -> Embeddings:
        """Embed the request's inputs on the first backend that takes it."""
        slot, embeddings = self._attempt(
            request.model, lambda n, deadline: n.backend.embed(request, deadline), gone,
            caller=caller)
        self._settle(slot, request.model, None)
        return embeddings

    def open_stream(self, request: GenerationRequest, gone: Callable[[], bool] = never_gone,
                    caller: Caller = ANONYMOUS) -> RoutedStream:
        """Start and prime a stream on the first backend that sends a token.

        The caller owns the stream: it closes it, then calls ``settle``.
        ``caller``: whose turn it is when requests queue for a slot.
        """
        key = prefix_key(request, self.prefix_chars) if self.pool.routing == "prefix" else None
        slot, stream = self._attempt(
            request.model, lambda n, deadline: self._start(n, request, deadline), gone, key,
            caller)
        return RoutedStream(slot, stream, request.model)

    def settle(self, routed: RoutedStream) -> None:
        """Record what a closed stream says about its backend, and free its slot."""
        self._settle(routed.slot, routed.model, routed.stream)

    def _start(self, node: Node, request: GenerationRequest, deadline: float) -> TokenStream:
        stream = node.backend.stream(request, deadline)
        try:
            stream.prime()
        except BaseException:
            stream.close()
            raise
        return stream

    def _attempt(self, model: str, call: Callable[[Node, float], T], gone: Callable[[], bool],
                 key: bytes | None = None, caller: Caller = ANONYMOUS) -> tuple[Slot, T]:
        """Run ``call`` on successive backends until one succeeds or a limit is reached."""
        deadline = self.timeouts.deadline()
        tried: list[Node] = []
        last: GatewayError | None = None
        while len(tried) < self.max_attempts:
            slot = self.pool.acquire(model, tried, deadline, gone, key, caller)
            if slot is None:
                break
            node = slot.node
            tried.append(node)
            context.note_backend(node.url)
            watch = ClientWatch(gone)
            try:
                with watch if gone is not never_gone else nullcontext():
                    return slot, call(node, deadline)
            except GatewayError as exc:
                # Health first: a queued request must not be handed this slot
                # on a backend whose circuit is about to open.
                if unhealthy(exc) and not watch.left:
                    self.pool.failed(node, exc.type, exc.message)
                elif isinstance(exc, BackendBusy):
                    self.pool.busy_for(node, retry_after(exc))
                self.pool.release(slot)
                if watch.left:  # our own doing: the client left, the backend is fine
                    raise ClientLeft() from exc
                if isinstance(exc, ModelNotFound):  # another backend may serve it
                    self.pool.does_not_serve(node, model)
                elif not isinstance(exc, RETRYABLE):
                    raise
                if time.monotonic() >= deadline:
                    raise
                metrics.UPSTREAM.labels(node.url, exc.type).inc()
                log.info("%s from %s; trying another backend", exc.type, node.url)
                last = exc
            except BaseException:
                self.pool.release(slot)  # a bug or a killed greenlet must not leak the slot
                raise
        raise last or self.pool.unavailable(model)

    def _settle(self, slot: Slot, model: str, stream: TokenStream | None) -> None:
        """Record what the request says about the backend's health, then free its slot."""
        node = slot.node
        if stream is None or stream.finished:
            self.pool.succeeded(node, model)
        elif stream.error in UNHEALTHY_STREAM_ENDS:
            self.pool.failed(node, stream.error, stream.error_message or stream.error)
        self.pool.release(slot)

    def list_models(self) -> list[dict[str, Any]]:
        """Return every model the healthy backends serve, each once."""
        models: dict[str, dict[str, Any]] = {}
        failure: GatewayError | None = None
        answered = False
        nodes = self.pool.candidates("")
        if not nodes:
            raise self.pool.unavailable("any model")
        for node in nodes:
            try:
                listed = node.backend.list_models()
            except GatewayError as exc:
                failure = exc
                continue
            answered = True
            for model in listed:
                models.setdefault(model["id"], model)
        if failure is not None and not answered:
            raise failure
        return list(models.values())

    def probe(self, node: Node) -> dict[str, Any]:
        """Probe one backend now; update its health and models; return its status."""
        try:
            self.pool.probed(node, node.backend.probe(self.probe_timeout))
            metrics.BACKEND_UP.labels(node.url).set(1)
        except GatewayError as exc:
            self.pool.failed(node, exc.type, exc.message)
            metrics.BACKEND_UP.labels(node.url).set(0)
        return node.status(time.monotonic())

    def probe_all(self) -> list[dict[str, Any]]:
        """Probe every backend; return their statuses."""
        return [self.probe(node) for node in self.pool.nodes]
