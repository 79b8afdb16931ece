"""The current request's record, filled in by typed setters from code that knows no Flask.

The API attaches the record when a request starts (``api/records.py``); the
service, routing and upstream layers note what they learn through the
functions below. Outside a request (tests, background probes) they do nothing.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from flask_inference_gateway.core.types import StreamOutcome, Usage
from flask_inference_gateway.observability.record import RequestRecord

_current: ContextVar[RequestRecord | None] = ContextVar("gateway_record", default=None)


def attach(record: RequestRecord | None) -> None:
    """Make ``record`` the current request's record (None detaches it)."""
    _current.set(record)


def current() -> RequestRecord | None:
    """Return the current request's record, if there is one."""
    return _current.get()


def request_id() -> str | None:
    """Return the current request's id (forwarded to the backend), if any."""
    record = _current.get()
    return record.request_id if record is not None else None


def note_key(name: str) -> None:
    """Note the name of the API key that made the request."""
    if (record := _current.get()) is not None:
        record.key = name


def note_model(model: str) -> None:
    """Note the model the request runs."""
    if (record := _current.get()) is not None:
        record.model = model


def note_backend(url: str) -> None:
    """Note the backend the request was sent to (the last one, after failover)."""
    if (record := _current.get()) is not None:
        record.backend = url


def note_usage(usage: Usage) -> None:
    """Note the token counts of a whole answer."""
    if (record := _current.get()) is not None:
        record.usage = usage


def note_stream(outcome: StreamOutcome) -> None:
    """Note how the request's stream ended."""
    if (record := _current.get()) is not None:
        record.stream = outcome


def note_error(error_type: str, message: str, limit: str | None = None) -> None:
    """Note the error the request was answered with."""
    if (record := _current.get()) is not None:
        record.error, record.error_message, record.limit = error_type, message, limit


def note_prompt(prompt: Any) -> None:
    """Note the prompt (only with GATEWAY_LOG_PROMPTS)."""
    if (record := _current.get()) is not None:
        record.prompt = prompt


def note_output(text: str) -> None:
    """Note the generated text of a whole answer (only with GATEWAY_LOG_PROMPTS)."""
    if (record := _current.get()) is not None:
        record.output = text
