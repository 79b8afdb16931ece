"""What every backend adapter returns: a finished Completion or a TokenStream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from app.backend.http import abort_response, translate_errors
from app.errors import BackendError, BackendStreamBroken

# Takes one decoded upstream line; returns its text piece, or None when the line
# is the final one (after it has recorded the usage on the stream).
LineReader = Callable[["TokenStream", dict[str, Any]], "str | None"]


@dataclass(slots=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return the usage object of the gateway's responses."""
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(slots=True)
class Completion:
    """A whole generation, as returned by a non-streaming call."""

    model: str
    text: str
    done_reason: str | None
    usage: Usage


class TokenStream:
    """Iterate the text pieces of one upstream stream, then expose how it ended.

    Iterating yields ``str`` pieces as the backend sends them. When iteration
    ends, ``done_reason`` and ``usage`` hold the backend's final figures. A
    failure mid-stream raises a GatewayError. ``close()`` may be called at any
    time, from any thread, as often as wanted; it stops the upstream generation.
    """

    def __init__(self, response: requests.Response, model: str, read_line: LineReader) -> None:
        self.model = model
        self.done_reason: str | None = None
        self.usage = Usage()
        self.finished = False
        self._response = response
        self._read_line = read_line
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        pending = b""
        with translate_errors():
            for chunk in self._response.iter_content(chunk_size=None):
                if b"\n" not in chunk:
                    pending += chunk
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    piece = self._decode(line)
                    if piece:
                        yield piece
        if pending.strip():
            piece = self._decode(pending)
            if piece:
                yield piece
        if not self.finished:
            raise BackendStreamBroken()

    def _decode(self, line: bytes) -> str | None:
        if self.finished or not line.strip():
            # After the final line only the chunked terminator should follow;
            # reading it lets the pool reuse the connection.
            return None
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BackendError("The model backend sent a line that is not JSON.") from exc
        if not isinstance(data, dict):
            raise BackendError("The model backend sent a line that is not a JSON object.")
        if "error" in data:
            raise BackendError(f"The model backend failed mid-stream: {data['error']}")
        return self._read_line(self, data)

    def finish(self, done_reason: str | None, usage: Usage) -> None:
        """Record the backend's final figures; called by the adapter's line reader."""
        self.done_reason, self.usage, self.finished = done_reason, usage, True

    def close(self) -> None:
        """Release the upstream response; abort it if it has not finished."""
        if self._closed:
            return
        self._closed = True
        if self.finished:
            self._response.close()
        else:
            abort_response(self._response)
