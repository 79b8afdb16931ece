"""An inference gateway for GPU-hosted models, as a Flask extension.

    from flask_inference_gateway import InferenceGateway

    gateway = InferenceGateway()
    gateway.init_app(app, url_prefix="/ai")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_inference_gateway.extension import InferenceGateway

__all__ = ["InferenceGateway"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: gunicorn's master imports
    # flask_inference_gateway.worker and .settings, and must not load Flask and
    # requests before gevent has patched each worker.
    if name == "InferenceGateway":
        from flask_inference_gateway.extension import InferenceGateway

        return InferenceGateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
