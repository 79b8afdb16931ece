"""Response bodies of the routes every dialect shares: model lists and health."""

from __future__ import annotations

from marshmallow import Schema, fields

from flask_inference_gateway.api.fields import describe


class ModelInfo(Schema):
    """One model the backend serves (OpenAI's model object, plus Ollama details)."""

    id = fields.String(required=True, metadata=describe("Model name.", "llama3.2:latest"))
    object = fields.String(required=True, metadata=describe("Always 'model'.", "model"))
    created = fields.Integer(required=True, metadata=describe("Unix time it was last changed."))
    owned_by = fields.String(required=True, metadata=describe("Serving backend kind.", "ollama"))
    details = fields.Dict(metadata=describe("Backend details: size, family, quantization..."))


class ModelList(Schema):
    """Answer of GET /v1/models."""

    object = fields.String(required=True, metadata=describe("Always 'list'.", "list"))
    data = fields.List(fields.Nested(ModelInfo), required=True)


class HealthBody(Schema):
    """Answer of GET /healthz."""

    status = fields.String(required=True, metadata=describe("'ok' while the process serves.",
                                                            "ok"))


class BackendStatus(Schema):
    """How one backend answered the readiness probe."""

    url = fields.String(required=True)
    kind = fields.String(required=True, metadata=describe("'ollama' or 'openai'.", "ollama"))
    ok = fields.Boolean(required=True, metadata=describe("It answered its probe and has no "
                                                         "recent failure."))
    circuit = fields.String(required=True, metadata=describe(
        "'closed' (gets traffic) or 'open' (cooling down after failures).", "closed"))
    in_flight = fields.Integer(required=True, metadata=describe(
        "Requests this worker has on it now."))
    models = fields.List(fields.String(), required=True,
                         metadata=describe("Models it serves (with and without ':latest')."))
    loaded = fields.List(fields.String(), required=True,
                         metadata=describe("Models it holds in memory."))
    version = fields.String(metadata=describe("The backend's version, when it answered."))
    error = fields.String(metadata=describe("Why it is not ready, when it is not."))


class ReadyBody(Schema):
    """Answer of GET /readyz (200 when any backend can serve, 503 when none can)."""

    status = fields.String(required=True, metadata=describe("'ready' or 'not_ready'.", "ready"))
    backends = fields.List(fields.Nested(BackendStatus), required=True)
