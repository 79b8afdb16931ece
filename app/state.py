"""What one mounted gateway shares between its views, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import current_app
from marshmallow import Schema

if TYPE_CHECKING:
    from app.observability.gpu import Poller
    from app.security.keys import KeyStore
    from app.service import InferenceService

EXTENSION_KEY = "inference_gateway"


@dataclass(frozen=True)
class GatewayState:
    """The settings and collaborators of one mounted gateway."""

    config: dict[str, Any]
    service: InferenceService
    schemas: dict[str, Schema]
    keys: KeyStore | None  # None: authentication is off
    pollers: tuple[Poller, ...]  # GPU/residency gauges; backend health probes
    max_body_bytes: int
    heartbeat_seconds: float


def gateway() -> GatewayState:
    """Return the state of the gateway mounted on the current app."""
    return current_app.extensions[EXTENSION_KEY]
