"""InferenceGateway: the Flask extension that mounts the gateway on an app."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Flask
from flask_cors import CORS
from flask_restx import apidoc
from marshmallow import Schema

from app.api import create_blueprint, keep_errors_inside
from app.backend import BackendPool, OllamaBackend, OpenAIBackend, Router, Timeouts
from app.backend.pool import Backend
from app.cli import keys_cli
from app.config import ConfigError, coerce, load_config
from app.observability import metrics, record
from app.observability.gpu import Poller, backend_poll
from app.schemas import ChatRequest, GenerateRequest
from app.security.auth import require_key
from app.security.keys import KeyStore
from app.security.limits import build_limiter
from app.security.usage import MemoryCounters, RedisCounters, UsageLedger
from app.service import InferenceService
from app.state import EXTENSION_KEY, GatewayState

log = logging.getLogger(__name__)


def resolve_config(app: Flask, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the environment, the app's GATEWAY_* keys and explicit overrides, in that order."""
    config = load_config()
    config.update({k: coerce(k, v) for k, v in app.config.items() if k.startswith("GATEWAY_")})
    config.update({k: coerce(k, v) for k, v in overrides.items()})
    return config


def build_ledger(config: dict[str, Any]) -> UsageLedger | None:
    """Return the token-budget and stream-cap ledger, or None when limits are off."""
    if config["GATEWAY_RATE_LIMIT_DISABLED"]:
        return None
    url = config["GATEWAY_REDIS_URL"]
    counters = RedisCounters(url, config["GATEWAY_REDIS_TIMEOUT"]) if url else MemoryCounters()
    if not url and config["GATEWAY_WORKERS"] > 1:
        log.warning("GATEWAY_REDIS_URL is not set: rate limits, token budgets and stream caps "
                    "are counted per worker (%d workers), not for the whole gateway",
                    config["GATEWAY_WORKERS"])
    return UsageLedger(counters, tokens_per_minute=config["GATEWAY_TOKENS_PER_MINUTE"],
                       max_streams=config["GATEWAY_MAX_STREAMS"],
                       fail_open=config["GATEWAY_REDIS_FAIL_OPEN"])


def build_backends(config: dict[str, Any]) -> list[Backend]:
    """Create one adapter per configured Ollama and OpenAI-compatible server."""
    timeouts = Timeouts(connect=config["GATEWAY_CONNECT_TIMEOUT"],
                        first_token=config["GATEWAY_FIRST_TOKEN_TIMEOUT"],
                        between_tokens=config["GATEWAY_READ_TIMEOUT"],
                        total=config["GATEWAY_TOTAL_TIMEOUT"])
    pool_size = config["GATEWAY_WORKER_CONNECTIONS"]
    backends: list[Backend] = [OllamaBackend(url, timeouts=timeouts, pool_size=pool_size)
                               for url in config["GATEWAY_OLLAMA_URL"]]
    backends += [OpenAIBackend(url, timeouts=timeouts, pool_size=pool_size,
                               api_key=config["GATEWAY_OPENAI_API_KEY"])
                 for url in config["GATEWAY_OPENAI_URL"]]
    if not backends:
        raise ConfigError("No backend: set GATEWAY_OLLAMA_URL or GATEWAY_OPENAI_URL.")
    return backends


def build_router(config: dict[str, Any]) -> Router:
    """Create the backend pool and the router that fails over between its backends."""
    backends = build_backends(config)
    cap = config["GATEWAY_BACKEND_MAX_CONCURRENCY"]
    # Each worker admits its share of a backend's slots, so all workers together
    # keep within the cap without talking to each other.
    per_worker = math.ceil(cap / config["GATEWAY_WORKERS"]) if cap else 0
    pool = BackendPool(backends, max_concurrency=per_worker,
                       queue_size=config["GATEWAY_QUEUE_SIZE"],
                       queue_timeout=config["GATEWAY_QUEUE_TIMEOUT"],
                       breaker_failures=config["GATEWAY_BREAKER_FAILURES"],
                       breaker_cooldown=config["GATEWAY_BREAKER_COOLDOWN"])
    return Router(pool, timeouts=backends[0].timeouts, max_attempts=config["GATEWAY_MAX_ATTEMPTS"])


def residency_poll(backends: list[Backend]) -> Callable[[], None]:
    """Return one poll of the GPU gauges and each Ollama server's loaded models."""
    polls = [backend_poll(b.base_url, b.loaded_models, metrics.BACKEND_UP)
             for b in backends if isinstance(b, OllamaBackend)]

    def poll() -> None:
        for one in polls:
            one()

    return poll


def build_state(config: dict[str, Any]) -> GatewayState:
    """Create the router, service, key store and schemas that one gateway uses."""
    router = build_router(config)
    service = InferenceService(router, default_model=config["GATEWAY_DEFAULT_MODEL"],
                               models_cache_seconds=config["GATEWAY_MODELS_CACHE_SECONDS"],
                               ledger=build_ledger(config),
                               log_prompts=config["GATEWAY_LOG_PROMPTS"])
    keys = None if config["GATEWAY_AUTH_DISABLED"] else KeyStore(
        config["GATEWAY_API_KEYS"], config["GATEWAY_API_KEYS_FILE"])
    limit = config["GATEWAY_MAX_TOKENS"]
    schemas: dict[str, Schema] = {"generate": GenerateRequest(max_tokens_limit=limit),
                                  "chat": ChatRequest(max_tokens_limit=limit)}
    backends = [node.backend for node in router.pool.nodes]
    pollers = (Poller(residency_poll(backends), config["GATEWAY_POLL_SECONDS"]),
               Poller(router.probe_all, config["GATEWAY_PROBE_SECONDS"], exclusive=False))
    return GatewayState(config=config, service=service, schemas=schemas, keys=keys,
                        pollers=pollers,
                        max_body_bytes=config["GATEWAY_MAX_BODY_BYTES"],
                        heartbeat_seconds=config["GATEWAY_HEARTBEAT_SECONDS"])


def serve_swagger_assets(app: Flask, prefix: str) -> None:
    """Serve Swagger UI's files under the gateway's prefix (unless the host app already does)."""
    restx = app.extensions.setdefault("restx", {})
    if not restx.get("apidoc_registered"):
        app.register_blueprint(apidoc.apidoc, url_prefix=prefix)
        restx["apidoc_registered"] = True


def guard(blueprint: Blueprint, app: Flask, state: GatewayState) -> None:
    """Attach request records, authentication, rate limits and CORS to the gateway's routes."""
    # First in, last out: every request, refused or not, gets its record.
    blueprint.before_request(record.begin)
    blueprint.after_request(record.end)
    blueprint.teardown_request(record.detach)
    for poller in state.pollers:
        blueprint.before_request(poller.ensure_started)
    config = state.config
    if not config["GATEWAY_AUTH_DISABLED"]:
        blueprint.before_request(require_key)
    if not config["GATEWAY_RATE_LIMIT_DISABLED"]:
        build_limiter(config, blueprint).init_app(app)
    origins = [o.strip() for o in config["GATEWAY_CORS_ORIGINS"].split(",") if o.strip()]
    if origins:
        CORS(blueprint, origins=origins, expose_headers=["Retry-After", "X-RateLimit-Limit",
                                                         "X-RateLimit-Remaining",
                                                         "X-RateLimit-Reset"])


class InferenceGateway:
    """Mount the gateway's routes, docs and error handling on a Flask app.

    ``InferenceGateway(app)`` or ``gateway.init_app(app, url_prefix="/ai")``;
    settings come from the environment, then ``app.config``, then ``config``.
    """

    def __init__(self, app: Flask | None = None, *, config: Mapping[str, Any] | None = None,
                 url_prefix: str = "") -> None:
        self.overrides = dict(config or {})
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        """Attach the gateway to ``app``, under ``url_prefix`` when given."""
        state = build_state(resolve_config(app, self.overrides))
        app.extensions[EXTENSION_KEY] = state
        prefix = self.url_prefix if url_prefix is None else url_prefix
        blueprint = create_blueprint(url_prefix=prefix)
        guard(blueprint, app, state)
        if prefix:
            keep_errors_inside(blueprint)
            serve_swagger_assets(app, prefix)
        app.register_blueprint(blueprint)
        app.cli.add_command(keys_cli)
