"""InferenceGateway: the Flask extension that mounts the gateway on an app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from marshmallow import Schema

from app.api import create_blueprint
from app.api.common import EXTENSION_KEY
from app.backend import OllamaBackend
from app.config import load_config
from app.schemas import ChatRequest, GenerateRequest
from app.service import InferenceService


@dataclass(frozen=True)
class GatewayState:
    """What the views of one mounted gateway share (``app.extensions``)."""

    config: dict[str, Any]
    service: InferenceService
    schemas: dict[str, Schema]
    max_body_bytes: int
    heartbeat_seconds: float


def resolve_config(app: Flask, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the environment, the app's GATEWAY_* keys and explicit overrides, in that order."""
    config = load_config()
    config.update({k: v for k, v in app.config.items() if k.startswith("GATEWAY_")})
    config.update(overrides)
    return config


def build_state(config: dict[str, Any]) -> GatewayState:
    """Create the backend, service and schemas that one gateway uses."""
    backend = OllamaBackend(config["GATEWAY_OLLAMA_URL"],
                            connect_timeout=config["GATEWAY_CONNECT_TIMEOUT"],
                            read_timeout=config["GATEWAY_READ_TIMEOUT"],
                            pool_size=config["GATEWAY_WORKER_CONNECTIONS"])
    service = InferenceService(backend, default_model=config["GATEWAY_DEFAULT_MODEL"],
                               models_cache_seconds=config["GATEWAY_MODELS_CACHE_SECONDS"])
    limit = config["GATEWAY_MAX_TOKENS"]
    schemas: dict[str, Schema] = {"generate": GenerateRequest(max_tokens_limit=limit),
                                  "chat": ChatRequest(max_tokens_limit=limit)}
    return GatewayState(config=config, service=service, schemas=schemas,
                        max_body_bytes=config["GATEWAY_MAX_BODY_BYTES"],
                        heartbeat_seconds=config["GATEWAY_HEARTBEAT_SECONDS"])


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
        app.register_blueprint(create_blueprint(url_prefix=prefix))
