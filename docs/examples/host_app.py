"""An existing Flask app that mounts the inference gateway under /ai.

Run it with ``flask --app docs/examples/host_app.py run`` (or gunicorn with
gevent workers, as the gateway's own gunicorn.conf.py does). The host keeps its
own routes, error pages and JSON settings; the gateway's routes, errors, Swagger
UI (/ai/docs) and spec (/ai/swagger.json) live under /ai.
"""

from __future__ import annotations

from flask import Flask

from flask_inference_gateway import InferenceGateway
from flask_inference_gateway.settings import environ_config

gateway = InferenceGateway()


def create_host_app(config: dict | None = None) -> Flask:
    """Create the host app with its own routes, then mount the gateway under /ai."""
    host = Flask(__name__)
    # The extension reads app.config only: this host takes GATEWAY_* settings
    # from the environment, then from its own config.
    host.config.from_mapping(environ_config())
    host.config.update(config or {})

    @host.get("/")
    def home() -> str:
        return "<h1>Our product</h1>"

    @host.errorhandler(404)
    def host_not_found(_error: Exception) -> tuple[str, int]:
        return "<h1>Not here (the host's own page)</h1>", 404

    # GATEWAY_* settings may live in host.config, e.g. GATEWAY_OLLAMA_URL.
    gateway.init_app(host, url_prefix="/ai")
    return host


app = create_host_app()
