"""The gateway's own error shape: ``{"error": {"type", "message", **details}}``."""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.errors import GatewayError


def body(error: GatewayError) -> dict[str, Any]:
    """Return the JSON body of ``error``."""
    return {"error": {"type": error.type, "message": error.message, **error.details}}


def status(error: GatewayError) -> int:
    """Return the HTTP status of ``error``."""
    return error.status
