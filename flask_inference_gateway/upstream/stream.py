"""The token stream of one upstream generation: a context manager with one owner.

``with adapter.stream(request) as stream:`` (or ``stream.close()`` in a
``finally``): the owner primes it, reads its batches and closes it; closing an
unfinished stream aborts the upstream response, so the backend stops
generating. Nothing else closes it: a cancel (``cancel``) or a drain
(``interrupt_all``) only cuts the upstream socket, and the owner's read then
ends.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import orjson
import requests

from flask_inference_gateway.core.errors import (
    BackendError,
    BackendStreamBroken,
    ClientLeft,
    GatewayError,
)
from flask_inference_gateway.core.pieces import Answer, Piece, text_of
from flask_inference_gateway.core.types import (
    Completion,
    StreamOutcome,
    Timeouts,
    Usage,
    never_gone,
)
from flask_inference_gateway.upstream.body import SILENCE, BodyReader
from flask_inference_gateway.upstream.http import abort_response, translate_errors
from flask_inference_gateway.upstream.watch import ClientWatch

# Takes one line of the upstream body; returns its piece (None: nothing to relay),
# and calls ``stream.finish`` on the final line.
LineDecoder = Callable[["TokenStream", bytes], "Piece | None"]

# Streams open in this process, so a draining worker can end them (see interrupt_all).
_LIVE: weakref.WeakSet[TokenStream] = weakref.WeakSet()


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


class TokenStream:
    """The text pieces of one upstream stream, as they arrive, then how it ended.

    ``batches()`` yields the pieces that arrived together (an empty list after
    each heartbeat interval of backend silence); iterating yields single
    pieces. When the stream has ended, ``done_reason`` and ``usage`` hold the
    backend's final figures. A failure mid-stream raises a GatewayError.
    ``close()`` is idempotent; it stops the upstream generation when the
    stream has not ended. ``outcome()`` says how it ended.
    """

    def __init__(self, response: requests.Response, model: str, decode: LineDecoder,
                 timeouts: Timeouts, deadline: float = math.inf) -> None:
        self.model = model
        self.done_reason: str | None = None
        self.usage = Usage()
        self.finished = False
        self.pieces = 0  # pieces relayed so far: the usage of a stream cut short
        self.first_piece_at: float | None = None  # time.monotonic() of the first piece
        self.error: str | None = None  # the type of the error that ended it, if one did
        self.error_message: str | None = None
        self.final: dict[str, Any] = {}  # the backend's last object, as it sent it
        self.keep_text = False  # keep the pieces, for GATEWAY_LOG_PROMPTS
        # The pieces are the backend's own bytes (frames), for a client of its API.
        self.verbatim: bool = getattr(decode, "verbatim", False)
        self._text: list[Piece] = []
        self._response = response
        self._body = BodyReader(response, timeouts.between_tokens,
                                first_timeout=timeouts.first_token, deadline=deadline)
        self._decode_line = decode
        self._heartbeat = timeouts.between_tokens
        self._source: Iterator[list[Piece]] | None = None
        self._primed: list[Piece] = []
        self._interrupted: GatewayError | None = None
        self._cancelled = False
        self._closed = False
        _LIVE.add(self)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Piece]:
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

    def batches(self, heartbeat: float) -> Iterator[list[Piece]]:
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
        if not self._cancelled:  # a cancel is the client's doing, not an error of the stream
            self.error, self.error_message = error.type, error.message
        return error

    def _batches(self) -> Iterator[list[Piece]]:
        """Return the one generator of this stream's batches (resumed by each caller)."""
        if self._source is None:
            self._source = self._read_batches()
        return self._source

    def _read_batches(self) -> Iterator[list[Piece]]:
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
        return "".join(map(text_of, self._text))

    def _decode_lines(self, lines: list[bytes]) -> Iterator[list[Piece]]:
        """Yield the pieces of ``lines``; those before a failing line reach the client first."""
        pieces: list[Piece] = []
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

    def _relayed(self, pieces: list[Piece]) -> None:
        if self.first_piece_at is None:
            self.first_piece_at = time.monotonic()
        self.pieces += len(pieces)

    def _keep(self, pieces: list[Piece]) -> None:
        if self.keep_text:
            self._text.extend(pieces)

    def finish(self, done_reason: str | None, usage: Usage, model: str | None = None,
               final: dict[str, Any] | None = None) -> None:
        """Record the backend's final figures (its name of the model and its last
        object, when it gave them); called by the adapter's line decoder."""
        self.done_reason, self.usage, self.finished = done_reason, usage, True
        self.model = model or self.model
        self.final = final or {}

    def interrupt(self, error: GatewayError) -> None:
        """Stop the upstream generation now; the reader then raises ``error``."""
        if not self._closed and not self._body.complete:
            self._interrupted = error
            abort_response(self._response)

    def collect(self, gone: Callable[[], bool] = never_gone) -> Completion:
        """Read the rest of the stream into one whole answer.

        A whole answer is streamed from the backend too, so the first-token and
        between-token timeouts bound it as they bound a stream. Nothing reaches
        the client until the end, so its departure is watched for meanwhile: it
        shuts the upstream socket down and raises ClientLeft.
        """
        watch = ClientWatch(gone)
        watch.connection = getattr(self._response.raw, "_connection", None)
        with watch if gone is not never_gone else nullcontext():
            answer = Answer()
            try:
                for piece in self:
                    answer.add(piece)
            except GatewayError as exc:
                if watch.left:
                    raise ClientLeft() from exc
                raise
        return Completion(self.model, answer.text, self.done_reason, self.usage,
                          thinking=answer.thinking, tool_calls=answer.tool_calls,
                          logprobs=answer.logprobs or None, final=self.final)

    def cancel(self) -> None:
        """Stop the upstream generation for a client that cancelled or left; the read ends."""
        self._cancelled = True
        self.interrupt(ClientLeft())

    def outcome(self) -> StreamOutcome:
        """Return how the stream ended (or stands, while it is open)."""
        # A stream cut short never got the backend's counts: its completion
        # tokens are the pieces relayed, its prompt tokens unknown.
        usage = self.usage if self.finished else Usage(0, self.pieces)
        return StreamOutcome(finished=self.finished, pieces=self.pieces, usage=usage,
                             first_piece_at=self.first_piece_at, error=self.error,
                             error_message=self.error_message,
                             text=self.text() if self.keep_text else None)

    def close(self) -> None:
        """Release the upstream response, aborting it if it was not read to its end."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self._body.complete:
            self._response.close()
        else:
            abort_response(self._response)
