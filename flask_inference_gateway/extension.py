"""InferenceGateway: the Flask extension that mounts the gateway on an app."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, request
from flask_cors import CORS

from flask_inference_gateway.api import (
    create_blueprint,
    keep_errors_inside,
    records,
    serve_swagger_assets,
)
from flask_inference_gateway.api.auth import identify, is_public, rate_limit_key, require_key
from flask_inference_gateway.api.errors import handle_error
from flask_inference_gateway.api.state import EXTENSION_KEY, GatewayState
from flask_inference_gateway.cli import keys_cli
from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.fleet.admission import Admission, LocalAdmission
from flask_inference_gateway.fleet.health import SharedHealth
from flask_inference_gateway.fleet.semaphore import MemorySemaphores, RedisSemaphores
from flask_inference_gateway.fleet.shared import SharedAdmission
from flask_inference_gateway.fleet.store import close_idle_connections, connect
from flask_inference_gateway.observability import metrics
from flask_inference_gateway.observability.gpu import Poller, backend_poll
from flask_inference_gateway.routing.discovery import Catalog, Discovery, follow
from flask_inference_gateway.routing.pool import Backend, BackendPool
from flask_inference_gateway.routing.router import Router
from flask_inference_gateway.security.keys import KeyStore
from flask_inference_gateway.security.keystores import open_entries
from flask_inference_gateway.security.limits import build_limiter
from flask_inference_gateway.security.usage import MemoryCounters, RedisCounters, UsageLedger
from flask_inference_gateway.service import InferenceService
from flask_inference_gateway.settings import ConfigError, Settings
from flask_inference_gateway.upstream.ollama import OllamaBackend
from flask_inference_gateway.upstream.openai import OpenAIBackend

log = logging.getLogger(__name__)


def build_ledger(settings: Settings) -> UsageLedger | None:
    """Return the token-budget and stream-cap ledger, or None when limits are off."""
    if settings.rate_limit_disabled:
        return None
    url = settings.redis_url
    counters = (RedisCounters(connect(url, settings.redis_timeout)) if url
                else MemoryCounters())
    if not url and settings.workers > 1:
        log.warning("GATEWAY_REDIS_URL is not set: rate limits, token budgets and stream caps "
                    "are counted per worker (%d workers), not for the whole gateway",
                    settings.workers)
    streams = (RedisSemaphores(connect(url, settings.redis_timeout), settings.lease_seconds)
               if url else MemorySemaphores())
    return UsageLedger(counters, tokens_per_minute=settings.tokens_per_minute,
                       max_streams=settings.max_streams,
                       fail_open=settings.redis_fail_open, streams=streams)


def build_timeouts(settings: Settings) -> Timeouts:
    """Return the timeouts of every backend call."""
    return Timeouts(connect=settings.connect_timeout, first_token=settings.first_token_timeout,
                    between_tokens=settings.read_timeout, total=settings.total_timeout)


def build_catalog(settings: Settings) -> Catalog:
    """Return the adapters of the configured servers (each address of a dns+ URL is one)."""
    timeouts, pool_size = build_timeouts(settings), settings.worker_connections

    def ollama(url: str) -> Backend:
        return OllamaBackend(url, timeouts=timeouts, pool_size=pool_size)

    def openai(url: str) -> Backend:
        return OpenAIBackend(url, timeouts=timeouts, pool_size=pool_size,
                             api_key=settings.openai_api_key)

    return Catalog([(Discovery(settings.ollama_url, settings.dns_seconds), ollama),
                    (Discovery(settings.openai_url, settings.dns_seconds), openai)])


def build_backends(settings: Settings, catalog: Catalog | None = None) -> list[Backend]:
    """Create one adapter per configured Ollama and OpenAI-compatible server."""
    catalog = catalog or build_catalog(settings)
    backends = catalog.backends()
    if not backends and not catalog.dynamic:
        raise ConfigError("No backend: set GATEWAY_OLLAMA_URL or GATEWAY_OPENAI_URL.")
    if not backends:  # a headless Service with no ready pod yet: found by the DNS poller
        log.warning("No backend address resolves yet; /readyz answers 503 until one does")
    return backends


def build_admission(settings: Settings) -> Admission:
    """Return what counts backend slots: Redis for the fleet, else this worker's share."""
    cap = settings.backend_max_concurrency
    # Without Redis each worker admits its share of a backend's slots, so all
    # workers together keep within the cap without talking to each other.
    local = LocalAdmission(math.ceil(cap / settings.workers) if cap else 0,
                           queue_size=settings.queue_size, queue_timeout=settings.queue_timeout)
    if not cap or not settings.redis_url:
        if cap and settings.workers > 1:
            log.warning("GATEWAY_REDIS_URL is not set: GATEWAY_BACKEND_MAX_CONCURRENCY=%d is "
                        "split over %d workers (%d each), per replica", cap, settings.workers,
                        local.cap)
        return local
    return SharedAdmission(connect(settings.redis_url, settings.redis_timeout), cap,
                           fallback=local, lease_seconds=settings.lease_seconds,
                           queue_size=settings.queue_size, queue_timeout=settings.queue_timeout,
                           fail_open=settings.redis_fail_open)


def build_router(settings: Settings, catalog: Catalog | None = None) -> Router:
    """Create the backend pool and the router that fails over between its backends."""
    backends = build_backends(settings, catalog)
    pool = BackendPool(backends, breaker_failures=settings.breaker_failures,
                       breaker_cooldown=settings.breaker_cooldown,
                       routing=settings.routing, prefix_balance=settings.prefix_balance,
                       admission=build_admission(settings),
                       health=SharedHealth(connect(settings.redis_url, settings.redis_timeout))
                       if settings.redis_url else None)
    return Router(pool, timeouts=build_timeouts(settings), max_attempts=settings.max_attempts,
                  prefix_chars=settings.prefix_chars)


FIRST_PROBE_WAIT = 2.0  # seconds; a backend slower than that to answer is learnt later


def residency_poll(backends: Callable[[], list[Backend]]) -> Callable[[], None]:
    """Return one poll of the GPU gauges and the loaded models of each Ollama server that
    ``backends()`` lists then."""
    polls: dict[str, Callable[[], None]] = {}

    def poll() -> None:
        # A backend keeps its poll (its residency gauges) while DNS keeps it.
        kept = {b.base_url: polls.get(b.base_url)
                or backend_poll(b.base_url, b.loaded_models, metrics.BACKEND_UP)
                for b in backends() if isinstance(b, OllamaBackend)}
        polls.clear()
        polls.update(kept)
        for one in kept.values():
            one()

    return poll


def idle_closer(router: Router, older_than: float) -> Callable[[], None]:
    """Return one pass closing this worker's backend connections idle ``older_than`` s,
    and its idle Redis connections."""

    def close() -> None:
        for node in router.pool.nodes:
            close_idle = getattr(node.backend, "close_idle", None)
            if close_idle is not None:
                close_idle(older_than)
        close_idle_connections()

    return close


def build_state(settings: Settings) -> GatewayState:
    """Create the router, service, key store and pollers that one gateway uses."""
    catalog = build_catalog(settings)
    router = build_router(settings, catalog)
    service = InferenceService(router, default_model=settings.default_model,
                               models_cache_seconds=settings.models_cache_seconds,
                               ledger=build_ledger(settings),
                               max_tokens=settings.max_tokens,
                               log_prompts=settings.log_prompts)
    entries = open_entries(settings)  # a Redis backend without GATEWAY_REDIS_URL: ConfigError
    keys = None if settings.auth_disabled else KeyStore(
        settings.api_keys, entries, fail_open=settings.redis_fail_open)
    pollers = (Poller(residency_poll(lambda: [n.backend for n in router.pool.nodes]),
                      settings.poll_seconds),
               # A worker's first requests wait for its first probe (model lists,
               # residency), so none goes to a backend that lacks its model.
               Poller(router.probe_all, settings.probe_seconds, exclusive=False,
                      first_wait=FIRST_PROBE_WAIT))
    if settings.upstream_idle_seconds:
        pollers += (Poller(idle_closer(router, settings.upstream_idle_seconds),
                           settings.upstream_idle_seconds / 2, exclusive=False),)
    if catalog.dynamic:  # dns+ URLs: each worker's pool follows what their names resolve to
        pollers += (Poller(follow(catalog, router.pool), settings.dns_seconds, exclusive=False),)
    return GatewayState(settings=settings, service=service, keys=keys, pollers=pollers)


def guard(blueprint: Blueprint, app: Flask, state: GatewayState) -> None:
    """Attach request records, authentication, rate limits and CORS to the gateway's routes."""
    # First in, last out: every request, refused or not, gets its record.
    blueprint.before_request(records.begin)
    blueprint.after_request(records.end)
    blueprint.teardown_request(records.detach)
    for poller in state.pollers:
        blueprint.before_request(poller.ensure_started)
    settings = state.settings
    if not settings.auth_disabled:
        blueprint.before_request(require_key)
    if not settings.rate_limit_disabled:
        build_limiter(settings, blueprint, key_func=rate_limit_key, identify=identify,
                      exempt_when=is_public).init_app(app)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        CORS(blueprint, origins=origins, expose_headers=["Retry-After", "X-RateLimit-Limit",
                                                         "X-RateLimit-Remaining",
                                                         "X-RateLimit-Reset"])


def claim_app(app: Flask) -> None:
    """Answer and record every request of ``app``, routed to the gateway or not."""
    # Routes outside the gateway's blueprint (unknown paths) answer in its shape.
    app.register_error_handler(Exception, handle_error)
    # Requests that match no route (404, 405) never reach the blueprint's hooks:
    # record them at the app level so they are logged and counted as well.
    app.before_request(record_unrouted)
    app.after_request(finish_unrouted)
    app.teardown_request(records.detach)


def record_unrouted() -> None:
    """Open the record of a request that matched no gateway route."""
    if request.blueprint is None:
        records.begin()


def finish_unrouted(response: Response) -> Response:
    """Finish the record of a request that matched no gateway route."""
    return records.end(response) if request.blueprint is None else response


class InferenceGateway:
    """Mount the gateway's routes, docs and error handling on a Flask app.

    ``InferenceGateway(app)`` or ``gateway.init_app(app, url_prefix="/ai")``.
    Settings are the app's ``GATEWAY_*`` config keys, then ``config``'s
    (see docs/configuration.md); the extension reads nothing else. A host
    that built its ``Settings`` already passes ``settings`` instead.
    """

    def __init__(self, app: Flask | None = None, *, config: Mapping[str, Any] | None = None,
                 url_prefix: str = "", settings: Settings | None = None) -> None:
        self.overrides = dict(config or {})
        self.url_prefix = url_prefix
        self.settings = settings
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None, *,
                 whole_app: bool = False) -> None:
        """Attach the gateway to ``app``, under ``url_prefix`` when given.

        ``whole_app``: the gateway owns the app, and answers its unknown paths too.
        """
        settings = self.settings or Settings.from_mapping({**app.config, **self.overrides})
        state = build_state(settings)
        app.extensions[EXTENSION_KEY] = state
        prefix = self.url_prefix if url_prefix is None else url_prefix
        blueprint = create_blueprint(url_prefix=prefix)
        guard(blueprint, app, state)
        if prefix:
            keep_errors_inside(blueprint)
            serve_swagger_assets(app, prefix)
        app.register_blueprint(blueprint)
        if whole_app:
            claim_app(app)
        app.cli.add_command(keys_cli)
