"""What every backend adapter returns: a finished Completion or a TokenStream."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from app.backend.body import SILENCE, BodyReader
from app.backend.http import abort_response, translate_errors
from app.errors import BackendError, BackendStreamBroken, BackendTimeout, GatewayError

# Takes one line of the upstream body; returns its text piece (None: no text),
# and calls ``stream.finish`` on the final line.
LineDecoder = Callable[["TokenStream", bytes], "str | None"]

# Streams open in this process, so a draining worker can end them (see interrupt_all).
_LIVE: weakref.WeakSet[TokenStream] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a backend may take: to connect, to the first token, between tokens, in all."""

    connect: float = 5.0
    first_token: float = 300.0
    between_tokens: float = 60.0
    total: float = 900.0

    def deadline(self) -> float:
        """Return the ``time.monotonic()`` by which a request started now must end."""
        return time.monotonic() + self.total


@dataclass(slots=True)
class Embeddings:
    """One vector per input, and the tokens the inputs took."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(slots=True)
class Probe:
    """What a backend's health probe found: its models, those in memory, its version."""

    models: list[dict[str, Any]]  # OpenAI-style model objects
    loaded: set[str]
    version: str = ""


def call_timeout(timeouts: Timeouts, deadline: float, read: float) -> tuple[float, float]:
    """Return ``(connect, read)`` for one call, never reaching past ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BackendTimeout("The request ran out of time (GATEWAY_TOTAL_TIMEOUT).")
    return min(timeouts.connect, left), min(read, left)


def parse_object(line: bytes) -> dict[str, Any]:
    """Decode one JSON line of a stream; raise the backend's own error when it sent one."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BackendError("The model backend sent a line that is not JSON.") from exc
    if not isinstance(data, dict):
        raise BackendError("The model backend sent a line that is not a JSON object.")
    if data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendError(f"The model backend failed mid-stream: {message}")
    return data


def interrupt_all(error: GatewayError) -> int:
    """End every open stream of this process with ``error``; return how many there were."""
    streams = list(_LIVE)
    for stream in streams:
        stream.interrupt(error)
    return len(streams)


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

    def __init__(self, response: requests.Response, model: str, decode: LineDecoder,
                 timeouts: Timeouts, deadline: float = math.inf) -> None:
        self.model = model
        self.backend = ""  # the URL of the backend serving it, set by the router
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
        self._body = BodyReader(response, timeouts.between_tokens,
                                first_timeout=timeouts.first_token, deadline=deadline)
        self._decode_line = decode
        self._heartbeat = timeouts.between_tokens
        self._source: Iterator[list[str]] | None = None
        self._primed: list[str] = []
        self._interrupted: GatewayError | None = None
        self._closed = False
        self._on_close: list[Callable[[TokenStream], None]] = []
        _LIVE.add(self)

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches(self._heartbeat):
            yield from batch

    def prime(self) -> None:
        """Read until the first pieces (or the end) arrive, keeping them for ``batches``.

        Before it returns, no byte has gone to the client: a failure here can
        still be answered with a status code, or retried on another backend.
        """
        self._body.heartbeat = math.inf  # no pings: nothing has been sent yet
        try:
            # A plain loop over the shared generator: leaving it early keeps the
            # generator open (``yield from`` would close it).
            for batch in self._batches():
                if batch:
                    self._primed = batch
                    return
        except GatewayError as exc:
            error = self._ended_by(exc)
            if error is exc:
                raise
            raise error from exc

    def batches(self, heartbeat: float) -> Iterator[list[str]]:
        """Yield lists of pieces as they arrive; ``[]`` after each heartbeat of silence."""
        if self._primed:
            primed, self._primed = self._primed, []
            self._keep(primed)
            yield primed
        self._body.heartbeat = heartbeat
        try:
            for batch in self._batches():
                self._keep(batch)
                yield batch
        except GatewayError as exc:
            error = self._ended_by(exc)
            if error is exc:
                raise
            raise error from exc

    def _ended_by(self, exc: GatewayError) -> GatewayError:
        """Record and return the error that ended the stream (an interruption first)."""
        error = self._interrupted or exc
        self.error, self.error_message = error.type, error.message
        return error

    def _batches(self) -> Iterator[list[str]]:
        """Return the one generator of this stream's batches (resumed by each caller)."""
        if self._source is None:
            self._source = self._read_batches()
        return self._source

    def _read_batches(self) -> Iterator[list[str]]:
        pending = b""
        with translate_errors():
            for payload in self._body.read(self._body.heartbeat):
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
            if self.finished or not line.strip():
                # After the final line only the chunked terminator should follow;
                # reading it lets the pool reuse the connection.
                continue
            try:
                piece = self._decode_line(self, line)
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

    def _keep(self, pieces: list[str]) -> None:
        if self.keep_text:
            self._text.extend(pieces)

    def finish(self, done_reason: str | None, usage: Usage) -> None:
        """Record the backend's final figures; called by the adapter's line decoder."""
        self.done_reason, self.usage, self.finished = done_reason, usage, True

    def on_close(self, callback: Callable[[TokenStream], None]) -> None:
        """Call ``callback(self)`` once, when the stream is closed."""
        self._on_close.append(callback)

    def interrupt(self, error: GatewayError) -> None:
        """Stop the upstream generation now; the reader then raises ``error``."""
        if not self._closed and not self._body.complete:
            self._interrupted = error
            abort_response(self._response)

    def close(self) -> None:
        """Release the upstream response (aborting it if unread), then run the close hooks."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        try:
            if self._body.complete:
                self._response.close()
            else:
                abort_response(self._response)
        finally:
            for callback in self._on_close:
                callback(self)
