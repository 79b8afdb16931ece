"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code", **details}}``.

``type`` is OpenAI's name for the status (what its SDK raises), ``code`` the
gateway's error type, ``param`` the first invalid field of a validation error.
"""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.errors import GatewayError

# OpenAI's error type per status (the names of its SDK's exceptions); other 4xx
# are "invalid_request_error", 5xx "server_error".
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


def body(error: GatewayError) -> dict[str, Any]:
    """Return the JSON body of ``error`` in OpenAI's shape."""
    param, problem = error.first_invalid_field()
    message = f"Invalid '{param}': {problem}" if param else error.message
    kind = OPENAI_TYPES.get(error.status) or (
        "server_error" if error.status >= 500 else "invalid_request_error")
    fields = {"message": message, "type": kind, "param": param, "code": error.type}
    return {"error": {**fields, **{k: v for k, v in error.details.items() if k not in fields}}}


def status(error: GatewayError) -> int:
    """Return the HTTP status of ``error``."""
    return error.status
