"""Pass a backend's stream on as it sent it, to a client of the same API.

An OpenAI client in front of an OpenAI-compatible server, or an Ollama
client in front of Ollama, can read the backend's own lines. Decoding every
token into a piece and encoding it again was most of the relay's work per
token, so a stream of the client's own kind relays bytes instead: a line
that carries only a token is found with a substring test and passed on as
it came (a "frame"). Only the lines that matter to the gateway are parsed:
the first (the backend's name for the model), the last (how the stream
ended, its usage), anything that may be an error. A stream relayed this way
has ``TokenStream.verbatim`` set and its pieces are ``bytes``; the dialect's
``Verbatim`` encoder (api/relay.py) writes them.

Frames with no text (a chat's opening role chunk) wait for the next one, so
the stream is primed, as any other, only once a token has come; and when the
backend names the model otherwise than the gateway does, the name in each
frame is replaced.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from flask_inference_gateway.core.pieces import Piece
from flask_inference_gateway.upstream.stream import TokenStream, parse_object

ERROR = b'"error"'  # a key: inside a JSON string its quotes would be escaped


class ChunkDecoder(Protocol):
    """What OpenAIFrames needs of the OpenAI adapter's decoder (openai.StreamDecoder)."""

    done_reason: str | None

    def data_of(self, stream: TokenStream, line: bytes) -> dict[str, Any] | None:
        """Return the chunk in an SSE line (None for others; [DONE] finishes ``stream``)."""

    def take(self, data: dict[str, Any]) -> Piece | None:
        """Note a chunk's model, usage and finish reason; return its piece."""


class ObjectDecoder(Protocol):
    """What OllamaFrames needs of the Ollama adapter's decoder (ollama.LineDecoder)."""

    def take(self, stream: TokenStream, data: dict[str, Any]) -> Piece | None:
        """Return the piece of a decoded line; finish ``stream`` on the last one."""


class Frames:
    """What both kinds of frame relay share: held frames and the model's name."""

    verbatim = True  # read by TokenStream: its pieces are bytes to write as they are

    def __init__(self, end: bytes) -> None:
        self.end = end  # the bytes that end a line in this format
        self.held = b""  # frames without text, sent with the next one
        self.named = False  # whether the backend's name for the model is known
        self.rename: tuple[bytes, bytes] | None = None  # (the backend's, the gateway's)

    def learn_name(self, stream: TokenStream, data: dict[str, Any]) -> None:
        """Note the backend's name for the model, once: it is replaced when it differs."""
        self.named = True
        sent = data.get("model")
        if isinstance(sent, str) and sent != stream.model:
            self.rename = (b'"model":' + orjson.dumps(sent),
                           b'"model":' + orjson.dumps(stream.model))

    def frame(self, line: bytes) -> bytes:
        """Return ``line`` as it goes to the client, after any frames held."""
        if self.rename is not None:
            line = line.replace(*self.rename, 1)
        out, self.held = self.held + line + self.end, b""
        return out

    def hold(self, line: bytes) -> None:
        """Keep a frame without text for the next one."""
        self.held = self.frame(line)


class OpenAIFrames(Frames):
    """Relay an OpenAI-compatible server's SSE chunks as sent; parse only those that matter.

    The usage chunk (the gateway always asks for usage) reaches the client
    only when it asked for it too; ``data: [DONE]`` is the encoder's to send.
    """

    # Every token chunk has one (compact, or as Python's json writes it); a finishing
    # chunk, a usage chunk or an error has not.
    TOKEN, SPACED_TOKEN = b'"finish_reason":null', b'"finish_reason": null'

    def __init__(self, decoder: ChunkDecoder, include_usage: bool) -> None:
        super().__init__(b"\n\n")
        self.decoder = decoder
        self.include_usage = include_usage

    def __call__(self, stream: TokenStream, line: bytes) -> bytes | None:
        """Return one SSE line as it goes to the client, or None."""
        if self.named and (self.TOKEN in line or self.SPACED_TOKEN in line) \
                and ERROR not in line and b'"usage":{' not in line and b'"usage": {' not in line:
            return self.frame(line)
        data = self.decoder.data_of(stream, line)
        if data is None:  # not a chunk, or [DONE]: a frame still held goes now
            if not (stream.finished and self.held):
                return None
            held, self.held = self.held, b""
            return held
        if not self.named:
            self.learn_name(stream, data)
        piece = self.decoder.take(data)
        if piece is None:  # no choices: the usage chunk
            return self.frame(line) if self.include_usage else None
        if not piece and not self.decoder.done_reason:
            self.hold(line)
            return None
        return self.frame(line)


class OllamaFrames(Frames):
    """Relay Ollama's NDJSON lines as sent; parse only the first, the last and errors."""

    TOKEN = b'"done":false'  # every line but the last; an error line has no done

    def __init__(self, decoder: ObjectDecoder) -> None:
        super().__init__(b"\n")
        self.decoder = decoder

    def __call__(self, stream: TokenStream, line: bytes) -> bytes | None:
        """Return one line as it goes to the client, or None."""
        if self.named and self.TOKEN in line and ERROR not in line:
            return self.frame(line)
        data = parse_object(line)  # raises the backend's own error
        if not self.named:
            self.learn_name(stream, data)
        piece = self.decoder.take(stream, data)
        if not piece and not stream.finished:
            self.hold(line)
            return None
        return self.frame(line)
