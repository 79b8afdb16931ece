"""Ollama's error shape: ``{"error": "message"}``, and 400 where the gateway says 422."""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.errors import GatewayError

# Every path under it is Ollama's, unknown ones included.
PREFIX = "/api/"


def body(error: GatewayError) -> dict[str, Any]:
    """Return the JSON body of ``error`` in Ollama's shape: the message alone."""
    param, problem = error.first_invalid_field()
    return {"error": f"invalid {param}: {problem}" if param else error.message}


def status(error: GatewayError) -> int:
    """Return the HTTP status of ``error``: Ollama answers an invalid body with 400."""
    return 400 if error.status == 422 else error.status
