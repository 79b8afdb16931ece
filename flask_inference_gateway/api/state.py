"""What one mounted gateway shares between its views, kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from flask_inference_gateway.observability.gpu import Poller
from flask_inference_gateway.security.keys import KeyStore
from flask_inference_gateway.service import InferenceService
from flask_inference_gateway.settings import Settings

EXTENSION_KEY = "inference_gateway"


@dataclass(frozen=True)
class GatewayState:
    """The settings and collaborators of one mounted gateway."""

    settings: Settings
    service: InferenceService
    keys: KeyStore | None  # None: authentication is off
    pollers: tuple[Poller, ...]  # GPU/residency gauges; backend health probes


def gateway() -> GatewayState:
    """Return the state of the gateway mounted on the current app."""
    return current_app.extensions[EXTENSION_KEY]
