"""Values read from a backend's JSON, checked for the types the gateway relies on.

A backend that sends a number where text belongs, or a negative token count,
is a faulty backend: the client gets a 502 naming the field (or the stream's
error event), never a 500 from deep inside the gateway.
"""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.errors import BackendError


def text(value: Any, name: str) -> str:
    """Return a text field of the backend's answer ("" when absent)."""
    if value is None:
        return ""
    if type(value) is not str:
        raise BackendError(f"The model backend sent a '{name}' that is not text.")
    return value


def optional_text(value: Any, name: str) -> str | None:
    """Return a text field that may be absent (None), such as a finish reason."""
    return None if value is None or value == "" else text(value, name)


def count(value: Any, name: str) -> int:
    """Return a token count of the backend's answer (0 when absent)."""
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise BackendError(f"The model backend sent a '{name}' that is no token count.")
    return value


def vectors(values: Any, name: str) -> list[list[float]]:
    """Return embedding vectors: lists of numbers."""
    for vector in values:
        if not isinstance(vector, list) or not all(
                type(x) is float or type(x) is int for x in vector):
            raise BackendError(f"The model backend sent '{name}' that are not lists of numbers.")
    return values
