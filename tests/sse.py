"""Parse server-sent events the way a client would, for assertions."""

from __future__ import annotations

from typing import Any

import orjson

COMMENT = ("comment", None)


def parse_sse(raw: bytes) -> list[tuple[str | None, Any]]:
    """Return (event name, decoded data) per event; comments as COMMENT."""
    parsed: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            parsed.append(COMMENT)
            continue
        name, data = None, None
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data = orjson.loads(value)
        parsed.append((name, data))
    return parsed
