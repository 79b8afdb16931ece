"""What every backend adapter returns: a finished Completion or a TokenStream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from app.backend.body import SILENCE, BodyReader
from app.backend.http import abort_response, translate_errors
from app.errors import BackendError, BackendStreamBroken, GatewayError

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
    """The text pieces of one upstream stream, as they arrive, then how it ended.

    ``batches()`` yields the pieces that arrived together (an empty list after
    each heartbeat interval of backend silence); iterating yields single
    pieces. When the stream has ended, ``done_reason`` and ``usage`` hold the
    backend's final figures. A failure mid-stream raises a GatewayError.
    ``close()`` may be called at any time, as often as wanted; it stops the
    upstream generation when the stream has not ended.
    """

    def __init__(self, response: requests.Response, model: str, read_line: LineReader,
                 read_timeout: float) -> None:
        self.model = model
        self.done_reason: str | None = None
        self.usage = Usage()
        self.finished = False
        self.pieces = 0  # pieces relayed so far: the usage of a stream cut short
        self.first_piece_at: float | None = None  # time.monotonic() of the first piece
        self.error: str | None = None  # the type of the error that ended it, if one did
        self.error_message: str | None = None
        self.keep_text = False  # keep the pieces, for GATEWAY_LOG_PROMPTS
        self._text: list[str] = []
        self._response = response
        self._body = BodyReader(response, read_timeout)
        self._read_line = read_line
        self._read_timeout = read_timeout
        self._closed = False
        self._on_close: list[Callable[[TokenStream], None]] = []

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches(self._read_timeout):
            yield from batch

    def batches(self, heartbeat: float) -> Iterator[list[str]]:
        """Yield lists of pieces as they arrive; ``[]`` after each heartbeat of silence."""
        try:
            yield from self._batches(heartbeat)
        except GatewayError as exc:
            self.error, self.error_message = exc.type, exc.message
            raise

    def _batches(self, heartbeat: float) -> Iterator[list[str]]:
        pending = b""
        with translate_errors():
            for payload in self._body.read(heartbeat):
                if payload is SILENCE:
                    yield []
                    continue
                if b"\n" not in payload:
                    pending += payload
                    continue
                *lines, pending = (pending + payload).split(b"\n")
                yield from self._decode_lines(lines)
        yield from self._decode_lines([pending])
        if not self.finished:
            raise BackendStreamBroken()

    def text(self) -> str:
        """Return the text relayed so far (kept only when ``keep_text`` is set)."""
        return "".join(self._text)

    def _decode_lines(self, lines: list[bytes]) -> Iterator[list[str]]:
        """Yield the pieces of ``lines``; those before a failing line reach the client first."""
        pieces: list[str] = []
        failure: GatewayError | None = None
        for line in lines:
            try:
                piece = self._decode(line)
            except GatewayError as exc:
                failure = exc
                break
            if piece:
                pieces.append(piece)
        if pieces:
            self._relayed(pieces)
            yield pieces
        if failure is not None:
            raise failure

    def _relayed(self, pieces: list[str]) -> None:
        if self.first_piece_at is None:
            self.first_piece_at = time.monotonic()
        self.pieces += len(pieces)
        if self.keep_text:
            self._text.extend(pieces)

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

    def on_close(self, callback: Callable[[TokenStream], None]) -> None:
        """Call ``callback(self)`` once, when the stream is closed."""
        self._on_close.append(callback)

    def close(self) -> None:
        """Release the upstream response (aborting it if unread), then run the close hooks."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._body.complete:
                self._response.close()
            else:
                abort_response(self._response)
        finally:
            for callback in self._on_close:
                callback(self)
