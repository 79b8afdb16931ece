"""Marshmallow pieces every dialect's schemas share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields

from flask_inference_gateway.core.types import Options

ROLES = ("system", "user", "assistant", "tool")


class Number(fields.Float):
    """A JSON number; unlike fields.Float it refuses strings and booleans."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, (str, bool)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def describe(text: str, example: Any = None) -> dict[str, Any]:
    """Return field metadata that Swagger shows."""
    return {"description": text} if example is None else {"description": text, "example": example}


def options_from(source: Mapping[str, Any], max_tokens: int) -> Options:
    """Return the sampling options named as the gateway names them in a loaded body."""
    stop = source.get("stop")
    return Options(max_tokens=max_tokens, temperature=source.get("temperature"),
                   top_p=source.get("top_p"), top_k=source.get("top_k"),
                   stop=tuple(stop) if stop is not None else None, seed=source.get("seed"))
