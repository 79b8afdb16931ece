"""The current request's record, reachable from code that knows nothing of Flask."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_current: ContextVar[Any] = ContextVar("gateway_record", default=None)


def attach(record: Any) -> None:
    """Make ``record`` the current request's record (None detaches it)."""
    _current.set(record)


def observe(**facts: Any) -> None:
    """Add facts (model, usage, error, ...) to the current request's record, if any."""
    record = _current.get()
    if record is not None:
        for name, value in facts.items():
            setattr(record, name, value)


def request_id() -> str | None:
    """Return the current request's id (forwarded to the backend), if any."""
    record = _current.get()
    return record.request_id if record is not None else None
