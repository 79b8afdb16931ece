"""The gateway's settings: the SETTINGS table, and a frozen ``Settings`` built from it once.

Every setting is a ``GATEWAY_*`` variable with a parser, a default and a
meaning. ``Settings.from_mapping`` reads them from any mapping: the
environment (the deployable app and gunicorn.conf.py) or a Flask app's config
(the extension, which reads nothing else). ``docs/configuration.md`` holds
``markdown_table()``; a test keeps the two in step. Standard library only:
gunicorn's master imports it before any worker patches its sockets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask_inference_gateway.core.parse import (
    parse_bool,
    parse_choice,
    parse_limit,
    parse_non_negative_float,
    parse_non_negative_int,
    parse_positive_float,
    parse_positive_int,
    parse_url_list,
)


class ConfigError(ValueError):
    """A GATEWAY_* variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, parser, default and meaning."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def attribute(self) -> str:
        """Return the name of this setting on ``Settings``: GATEWAY_MAX_TOKENS -> max_tokens."""
        return self.name.removeprefix("GATEWAY_").lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("GATEWAY_OLLAMA_URL", parse_url_list, ("http://127.0.0.1:11434",),
            "Ollama servers the gateway calls: comma-separated base URLs (may be empty when "
            "GATEWAY_OPENAI_URL is set)."),
    Setting("GATEWAY_OPENAI_URL", parse_url_list, (),
            "OpenAI-compatible servers (vLLM, llama.cpp server, TGI): comma-separated base "
            "URLs, with or without /v1."),
    Setting("GATEWAY_OPENAI_API_KEY", str, "",
            "Bearer token sent to the OpenAI-compatible servers, when they need one."),
    Setting("GATEWAY_BIND", str, "0.0.0.0:8080",
            "Address gunicorn listens on (host:port)."),
    Setting("GATEWAY_WORKERS", parse_positive_int, os.cpu_count() or 1,
            "Gunicorn worker processes; default: the number of CPU cores."),
    Setting("GATEWAY_WORKER_CONNECTIONS", parse_positive_int, 1000,
            "Concurrent connections per gevent worker; also sizes the backend connection pool."),
    Setting("GATEWAY_LOG_LEVEL", str, "info",
            "Log level of gunicorn and the gateway (debug, info, warning, error)."),
    Setting("GATEWAY_LOG_FORMAT", parse_choice("json", "text"), "json",
            "Log lines as JSON objects ('json') or plain text for humans ('text')."),
    Setting("GATEWAY_LOG_PROMPTS", parse_bool, False,
            "Put prompts and outputs in the access log (off: never logged)."),
    Setting("GATEWAY_METRICS_TOKEN", str, "",
            "When set, GET /metrics requires 'Authorization: Bearer <this token>'."),
    Setting("GATEWAY_POLL_SECONDS", float, 15.0,
            "How often one worker reads GPU (NVML) and loaded-model (/api/ps) gauges; "
            "0 disables."),
    Setting("GATEWAY_CONNECT_TIMEOUT", parse_positive_float, 5.0,
            "Seconds to wait for a TCP connection to a backend."),
    Setting("GATEWAY_FIRST_TOKEN_TIMEOUT", parse_positive_float, 300.0,
            "Seconds a backend may take to send the first token (covers loading the model); "
            "past it the request fails over to another backend."),
    Setting("GATEWAY_READ_TIMEOUT", parse_positive_float, 120.0,
            "Longest silence (seconds) allowed between two tokens of a stream."),
    Setting("GATEWAY_TOTAL_TIMEOUT", parse_positive_float, 900.0,
            "Deadline (seconds) for a whole request: queueing, failover and generation."),
    Setting("GATEWAY_BACKEND_MAX_CONCURRENCY", parse_non_negative_int, 0,
            "Requests in flight per backend (e.g. its OLLAMA_NUM_PARALLEL): with "
            "GATEWAY_REDIS_URL, across every worker of every replica; without, split evenly "
            "over the GATEWAY_WORKERS workers of this one; 0: no cap."),
    Setting("GATEWAY_QUEUE_SIZE", parse_non_negative_int, 100,
            "Requests per worker that may wait for a backend slot; more get 503. Waiting "
            "requests are served fairly: round-robin over keys, by each key's weight."),
    Setting("GATEWAY_QUEUE_TIMEOUT", parse_non_negative_float, 30.0,
            "Seconds a request may wait for a backend slot before it gets 503 with "
            "Retry-After."),
    Setting("GATEWAY_ROUTING", parse_choice("least-busy", "prefix", "round-robin"), "prefix",
            "How to choose among backends that serve the model: prefix (a conversation goes "
            "back to the backend that has its prefix cached, unless that one is over the load "
            "bound), least-busy or round-robin."),
    Setting("GATEWAY_PREFIX_CHARS", parse_positive_int, 4096,
            "Characters of a request's leading messages (up to the first user message) that "
            "choose its backend under prefix routing."),
    Setting("GATEWAY_PREFIX_BALANCE", parse_positive_float, 0.25,
            "Prefix routing's load bound: a backend over (1 + this) × the mean load takes no "
            "more requests for the prefixes it prefers."),
    Setting("GATEWAY_UPSTREAM_IDLE_SECONDS", parse_non_negative_float, 30.0,
            "Seconds a pooled connection to a backend may stay idle before the gateway closes "
            "it (a burst's connections do not stay open for good); 0 keeps them."),
    Setting("GATEWAY_MAX_ATTEMPTS", parse_positive_int, 3,
            "Backends one request may try (failover) before its error is returned."),
    Setting("GATEWAY_BREAKER_FAILURES", parse_positive_int, 3,
            "Consecutive failures after which a backend gets no traffic for a cool-down."),
    Setting("GATEWAY_BREAKER_COOLDOWN", parse_positive_float, 10.0,
            "Seconds a failing backend is left alone before it is tried again."),
    Setting("GATEWAY_PROBE_SECONDS", parse_non_negative_float, 5.0,
            "How often each worker probes every backend (health, models, residency); "
            "0 disables."),
    Setting("GATEWAY_DEFAULT_MODEL", str, "llama3.2",
            "Model used when a request names none."),
    Setting("GATEWAY_MAX_BODY_BYTES", parse_positive_int, 1_048_576,
            "Largest request body accepted; larger bodies get 413."),
    Setting("GATEWAY_MAX_TOKENS", parse_positive_int, 4096,
            "Upper bound a request may ask for in max_tokens."),
    Setting("GATEWAY_HEARTBEAT_SECONDS", parse_positive_float, 15.0,
            "Seconds of backend silence after which a stream gets a ': ping' comment."),
    Setting("GATEWAY_STREAM_PASSTHROUGH", parse_bool, True,
            "Stream a backend's own bytes to a client of its API (OpenAI to OpenAI-compatible, "
            "Ollama to Ollama) instead of re-encoding each token; ids and field order are then "
            "the backend's. Off with GATEWAY_LOG_PROMPTS."),
    Setting("GATEWAY_MODELS_CACHE_SECONDS", float, 10.0,
            "How long GET /v1/models reuses the backend's model list (0 disables)."),
    Setting("GATEWAY_GRACEFUL_TIMEOUT", parse_positive_int, 30,
            "Seconds gunicorn lets in-flight requests finish after SIGTERM."),
    Setting("GATEWAY_AUTH_DISABLED", parse_bool, False,
            "Turn API-key authentication off (trusted networks and benchmarks only)."),
    Setting("GATEWAY_API_KEYS", str, "",
            "Comma-separated API keys, each optionally 'name:key'; for quick set-ups."),
    Setting("GATEWAY_API_KEYS_FILE", str, "gateway-keys.json",
            "JSON file of named, hashed keys with per-key settings (flask keys ...); "
            "re-read when it changes."),
    Setting("GATEWAY_RATE_LIMIT_DISABLED", parse_bool, False,
            "Turn request-rate, token and stream limits off."),
    Setting("GATEWAY_RATE_LIMIT", parse_limit, "60/minute;1000/hour",
            "Default request-rate limit per key (per client address without auth); "
            "';'-separated."),
    Setting("GATEWAY_TOKENS_PER_MINUTE", parse_non_negative_int, 0,
            "Default token budget (prompt + completion) per key per minute; 0: none."),
    Setting("GATEWAY_MAX_STREAMS", parse_non_negative_int, 0,
            "Default cap on concurrent streams per key; 0: none."),
    Setting("GATEWAY_REDIS_URL", str, "",
            "Redis for limits shared by every worker and replica; empty: per-worker memory."),
    Setting("GATEWAY_REDIS_FAIL_OPEN", parse_bool, True,
            "When Redis is unreachable: 1 lets requests pass (warning once per outage), "
            "0 answers 503."),
    Setting("GATEWAY_REDIS_TIMEOUT", parse_positive_float, 0.25,
            "Seconds a Redis call may take before it counts as unreachable."),
    Setting("GATEWAY_LEASE_SECONDS", parse_positive_float, 5.0,
            "Life of a backend or stream slot held in Redis; its holder renews it every third "
            "of this, so the slots of a killed worker are free again after it."),
    Setting("GATEWAY_KEYS_BACKEND", parse_choice("file", "redis"), "file",
            "Where named keys live: 'file' (GATEWAY_API_KEYS_FILE, one machine) or 'redis' "
            "(GATEWAY_REDIS_URL, every replica; a revoke holds everywhere within a second)."),
    Setting("GATEWAY_DNS_SECONDS", parse_positive_float, 10.0,
            "How often a dns+http:// backend URL is resolved again (every address it "
            "resolves to is a backend)."),
    Setting("GATEWAY_TRUSTED_PROXIES", parse_non_negative_int, 0,
            "Proxies in front of the gateway whose X-Forwarded-* headers are trusted."),
    Setting("GATEWAY_CORS_ORIGINS", str, "",
            "Comma-separated origins allowed by CORS; empty: CORS off."),
)


_BY_NAME = {setting.name: setting for setting in SETTINGS}


def coerce(name: str, value: Any) -> Any:
    """Parse a setting given as a string (environment, app.config) and check it."""
    setting = _BY_NAME.get(name)
    if setting is None or not isinstance(value, str):
        return value
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed and typed; built once per gateway by ``from_mapping``."""

    ollama_url: tuple[str, ...]
    openai_url: tuple[str, ...]
    openai_api_key: str = field(repr=False)  # a secret
    bind: str
    workers: int
    worker_connections: int
    log_level: str
    log_format: str
    log_prompts: bool
    metrics_token: str = field(repr=False)  # a secret
    poll_seconds: float
    connect_timeout: float
    first_token_timeout: float
    read_timeout: float
    total_timeout: float
    backend_max_concurrency: int
    queue_size: int
    queue_timeout: float
    routing: str
    prefix_chars: int
    prefix_balance: float
    upstream_idle_seconds: float
    max_attempts: int
    breaker_failures: int
    breaker_cooldown: float
    probe_seconds: float
    default_model: str
    max_body_bytes: int
    max_tokens: int
    heartbeat_seconds: float
    stream_passthrough: bool
    models_cache_seconds: float
    graceful_timeout: int
    auth_disabled: bool
    api_keys: str = field(repr=False)  # a secret
    api_keys_file: str
    rate_limit_disabled: bool
    rate_limit: str
    tokens_per_minute: int
    max_streams: int
    redis_url: str
    redis_fail_open: bool
    redis_timeout: float
    lease_seconds: float
    keys_backend: str
    dns_seconds: float
    trusted_proxies: int
    cors_origins: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build the settings from GATEWAY_* keys of ``values``; the defaults fill the rest."""
        return cls(**{s.attribute: coerce(s.name, values[s.name]) if s.name in values
                      else s.default for s in SETTINGS})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from the environment (default: os.environ)."""
        return cls.from_mapping(environ_config(environ))


def environ_config(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the GATEWAY_* variables of ``environ`` (default: os.environ), as strings."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in _BY_NAME if name in environ}


def describe_default(setting: Setting) -> str:
    """Return a setting's default as the configuration reference shows it."""
    value = "number of CPU cores" if setting.name == "GATEWAY_WORKERS" else setting.default
    if isinstance(value, tuple):
        value = ",".join(value)
    if isinstance(value, bool):
        value = int(value)
    return f"`{value if value != '' else '(empty)'}`"


def markdown_table() -> str:
    """Return the reference table of every setting (docs/configuration.md holds a copy)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {describe_default(s)} | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)
