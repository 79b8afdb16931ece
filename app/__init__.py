"""The deployable gateway: ``create_app()`` builds a Flask app around the extension.

Settings come from the environment (every ``GATEWAY_*`` variable), then from
``config``; ``wsgi.py`` serves what this returns. Host apps that mount the
gateway themselves use ``flask_inference_gateway.InferenceGateway`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.sessions import NullSession, SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_inference_gateway import InferenceGateway
from flask_inference_gateway.observability.jsonlog import make_formatter
from flask_inference_gateway.settings import Settings, environ_config

# Loggers whose records belong in the gateway's log: its own and Flask-Limiter's
# (which reports rate-limit store outages and recoveries).
LOGGERS = ("flask_inference_gateway", "flask-limiter")


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


class NoSessions(SessionInterface):
    """No cookie sessions: the gateway authenticates each request by its API key."""

    null = NullSession()  # read-only (writing raises), so every request may share it

    def open_session(self, app: Flask, request: Any) -> None:
        """Open none."""
        return None

    def make_null_session(self, app: Flask) -> NullSession:
        """Return the shared null session instead of building one per request."""
        return self.null

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        """Save nothing."""


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the gateway app; ``config`` overrides settings read from the environment."""
    app = Flask(__name__, static_folder=None)
    # A session per request (Flask's default) costs about 1 % of a stream's CPU for nothing.
    app.session_interface = NoSessions()
    app.config.from_mapping(environ_config())
    app.config.update(config or {})
    settings = Settings.from_mapping(app.config)
    configure_logging(settings.log_level, settings.log_format)
    # The gateway owns this app: unknown paths, too, answer in its JSON shape.
    InferenceGateway(settings=settings).init_app(app, whole_app=True)
    if settings.trusted_proxies:
        # Trust X-Forwarded-* only from that many proxies, so a client cannot
        # choose its own address (and with it, a fresh rate limit).
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    return app
