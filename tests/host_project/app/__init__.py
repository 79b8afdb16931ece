"""A host Flask project whose own package is named ``app``, as in Flask's tutorial.

It installs nothing but the gateway's distribution, and mounts the gateway
under /ai next to its own routes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from flask_inference_gateway import InferenceGateway

gateway = InferenceGateway()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the host's app: its own page, and the gateway under /ai."""
    app = Flask(__name__)
    app.config.update(GATEWAY_OLLAMA_URL=os.environ["HOST_OLLAMA_URL"],
                      GATEWAY_AUTH_DISABLED=True, GATEWAY_RATE_LIMIT_DISABLED=True,
                      GATEWAY_PROBE_SECONDS=0, GATEWAY_POLL_SECONDS=0)
    app.config.update(config or {})

    @app.get("/")
    def index() -> dict[str, str]:
        return {"package": __name__, "file": __file__}

    gateway.init_app(app, url_prefix="/ai")
    return app
