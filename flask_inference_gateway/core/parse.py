"""Parsers of GATEWAY_* values: each takes the raw string and returns the typed value.

Standard library only: gunicorn's master imports them through settings.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def parse_bool(raw: str) -> bool:
    """Parse 1/0, true/false, yes/no, on/off (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")


def parse_positive_float(raw: str) -> float:
    """Parse a float greater than zero."""
    value = float(raw)
    if value <= 0:
        raise ValueError(f"expected a number > 0, got {raw!r}")
    return value


def parse_positive_int(raw: str) -> int:
    """Parse an integer greater than zero."""
    value = int(raw)
    if value <= 0:
        raise ValueError(f"expected an integer > 0, got {raw!r}")
    return value


def parse_non_negative_int(raw: str) -> int:
    """Parse an integer of zero or more."""
    value = int(raw)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {raw!r}")
    return value


def parse_limit(raw: str) -> str:
    """Check a rate limit such as '60/minute;1000/hour'."""
    pattern = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$")
    parts = [part for part in raw.split(";") if part.strip()]
    if not parts or not all(pattern.match(part) for part in parts):
        raise ValueError(f"expected limits such as '60/minute;1000/hour', got {raw!r}")
    return raw.strip()


def parse_choice(*choices: str) -> Callable[[str], str]:
    """Return a parser that accepts one of ``choices`` (any case)."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_url(raw: str) -> str:
    """Parse an http(s) base URL, without its trailing slash.

    ``dns+http://name:port`` is accepted too: every address the name
    resolves to is a backend (a Kubernetes headless Service).
    """
    value = raw.strip().rstrip("/")
    if not value.removeprefix("dns+").startswith(("http://", "https://")):
        raise ValueError(f"expected an http://, https:// or dns+http:// URL, got {raw!r}")
    return value


def parse_url_list(raw: str) -> tuple[str, ...]:
    """Parse a comma-separated list of http(s) base URLs (may be empty)."""
    return tuple(parse_url(part) for part in raw.split(",") if part.strip())


def parse_non_negative_float(raw: str) -> float:
    """Parse a float of zero or more."""
    value = float(raw)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {raw!r}")
    return value
