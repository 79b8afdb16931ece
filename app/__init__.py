"""Flask inference gateway for GPU-hosted models: ``create_app()`` builds one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import load_config
from app.errors import handle_error
from app.extension import InferenceGateway
from app.observability import record
from app.observability.jsonlog import make_formatter

__all__ = ["InferenceGateway", "create_app"]

gateway = InferenceGateway()


# Loggers whose records belong in the gateway's log: its own and Flask-Limiter's
# (which reports rate-limit store outages and recoveries).
LOGGERS = ("app", "flask-limiter")


def configure_logging(level: str, kind: str) -> None:
    """Send the gateway's log records to stderr at ``level``, as JSON or text."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(kind))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if not logger.handlers or all(isinstance(h, logging.NullHandler)
                                      for h in logger.handlers):
            if not logging.getLogger().handlers:
                logger.addHandler(handler)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the gateway app; ``config`` overrides settings read from the environment."""
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(load_config())
    app.config.update(config or {})
    configure_logging(app.config["GATEWAY_LOG_LEVEL"], app.config["GATEWAY_LOG_FORMAT"])
    gateway.init_app(app)
    proxies = app.config["GATEWAY_TRUSTED_PROXIES"]
    if proxies:
        # Trust X-Forwarded-* only from that many proxies, so a client cannot
        # choose its own address (and with it, a fresh rate limit).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    # Routes outside the gateway's blueprint (unknown paths) answer in the same shape.
    app.register_error_handler(Exception, handle_error)
    # Requests that match no route (404, 405) never reach the blueprint's hooks:
    # record them at the app level so they are logged and counted as well.
    app.before_request(record_unrouted)
    app.after_request(finish_unrouted)
    app.teardown_request(record.detach)
    return app


def record_unrouted() -> None:
    """Open the record of a request that matched no gateway route."""
    if request.blueprint is None:
        record.begin()


def finish_unrouted(response: Response) -> Response:
    """Finish the record of a request that matched no gateway route."""
    return record.end(response) if request.blueprint is None else response
