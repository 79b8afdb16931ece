"""The card's stack with nothing of the gateway in it: the floor of its cost per request.

Flask in front, one pooled ``requests.Session`` behind (no proxy lookup from
the environment, a timeout on every call), the body passed through as
bytes and stream chunks written back as they arrive: the seed article's
proxy (``../shared/bench/anchors/seed_flask.py``) as a performance-minded
engineer would fix it, with no validation, keys, limits, routing, metrics or
logs. Same routes and body as the shared bench's anchors. Under gunicorn:

    gunicorn -k gevent -w 2 --worker-connections 4000 'floor_proxy:create_app()'
    gunicorn -k flask_inference_gateway.worker.GatewayWorker -w 2 'floor_proxy:create_app()'

``scripts/bench_floor.py`` puts it beside the gateway and aiohttp.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import requests
from flask import Flask, Response, request


def create_app() -> Flask:
    """Build the bare proxy in front of ``BACKEND_URL``'s ``/v1/completions``."""
    backend = os.environ.get("BACKEND_URL", "http://127.0.0.1:11434") + "/v1/completions"
    session = requests.Session()
    session.trust_env = False  # no proxy lookup per call, as the gateway's session
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=4000))
    app = Flask(__name__)

    def payload(stream: bool) -> bytes:
        data = request.get_json()
        return json.dumps({"model": data.get("model", "sim"), "prompt": data["prompt"],
                           "max_tokens": data.get("max_tokens", 256),
                           "temperature": data.get("temperature", 0.7),
                           "stream": stream}).encode()

    @app.post("/v1/generate")
    def generate() -> Response:
        upstream = session.post(backend, data=payload(False), timeout=60,
                                headers={"Content-Type": "application/json"})
        return Response(upstream.content, upstream.status_code, content_type="application/json")

    @app.post("/v1/generate/stream")
    def generate_stream() -> Response:
        upstream = session.post(backend, data=payload(True), timeout=60, stream=True,
                                headers={"Content-Type": "application/json"})

        def relay() -> Iterator[bytes]:
            with upstream:
                yield from upstream.iter_content(chunk_size=None)

        return Response(relay(), upstream.status_code, mimetype="text/event-stream")

    return app
