"""WebSocket streams: /v1/generate/ws and /v1/chat/ws (flask-sock), one generation each.

The client sends one request message (a REST body, plus "api_key" when no key
header came with the handshake) and may send {"type": "cancel"}; the server
sends token messages, then one done or error message, and closes the
connection. docs/api.md ("WebSocket") describes the protocol.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import orjson
from flask import Blueprint, request
from flask.blueprints import BlueprintSetupState
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

from flask_inference_gateway.api.auth import authenticate, presented_key
from flask_inference_gateway.api.calls import ollama_call, reason_with_calls
from flask_inference_gateway.api.common import load_data, schema_for
from flask_inference_gateway.api.errors import as_gateway_error, note
from flask_inference_gateway.api.native import errors
from flask_inference_gateway.api.native.schemas import ChatRequest, GenerateRequest
from flask_inference_gateway.api.records import current_record
from flask_inference_gateway.api.relay import Relay
from flask_inference_gateway.api.state import EXTENSION_KEY, gateway
from flask_inference_gateway.core.errors import BadRequest, GatewayError, InvalidJSON
from flask_inference_gateway.core.pieces import Answer, Piece
from flask_inference_gateway.core.types import Usage
from flask_inference_gateway.observability import context
from flask_inference_gateway.upstream.stream import TokenStream
from flask_inference_gateway.worker import client_probe

log = logging.getLogger(__name__)

# name -> (path, schema of the request message)
ROUTES = {"generate": ("/v1/generate/ws", GenerateRequest), "chat": ("/v1/chat/ws", ChatRequest)}
ENDPOINTS = frozenset(f"{name}_ws" for name in ROUTES)  # within the gateway's blueprint
# A client that connects and never asks must not hold a connection for long.
REQUEST_WAIT_SECONDS = 30.0
# How long the client gets to answer the closing handshake before the socket is cut.
CLOSE_WAIT_SECONDS = 2.0
SWITCHING_PROTOCOLS = 101  # the status a session is recorded with unless an error ended it
CANCEL = {"type": "cancel"}


def dumps(message: dict[str, Any]) -> str:
    """Encode one server message as JSON text (a text frame, not a binary one)."""
    # Validation messages key list items by index: OPT_NON_STR_KEYS writes "0".
    return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode()


def error_message(exc: BaseException) -> dict[str, Any]:
    """Return the error message of ``exc``: the REST error object plus its status."""
    error = as_gateway_error(exc)
    body = {**errors.body(error)["error"], "status": error.status}
    if "Retry-After" in error.headers:
        body["retry_after"] = error.headers["Retry-After"]
    return {"type": "error", "error": body}


def done_message(stream: TokenStream, cancelled: bool = False,
                 answer: Answer | None = None) -> dict[str, Any]:
    """Return the done message, with the tool calls made; a cancelled stream reports the
    pieces relayed so far."""
    if cancelled and not stream.finished:
        # The backend sends its counts only at the end: the prompt's are unknown.
        return {"type": "done", "done_reason": "cancelled",
                "usage": Usage(0, stream.pieces).to_dict()}
    calls = answer.tool_calls if answer else ()
    done = {"type": "done", "done_reason": reason_with_calls(stream.done_reason, bool(calls)),
            "usage": stream.usage.to_dict()}
    if calls:
        done["tool_calls"] = [ollama_call(call) for call in calls]
    return done


def piece_messages(pieces: list[Piece], answer: Answer) -> list[dict[str, Any]]:
    """Return the messages for pieces that arrived together: thinking, then text."""
    batch = Answer()
    for piece in pieces:
        batch.add(piece)
        answer.add(piece)
    messages = [{"type": "thinking", "text": batch.thinking}] if batch.thinking else []
    return messages + ([{"type": "token", "text": batch.text}] if batch.text else [])


def read_request(ws: Server) -> dict[str, Any]:
    """Wait for the request message and decode it."""
    raw = ws.receive(timeout=REQUEST_WAIT_SECONDS)
    if raw is None:
        raise BadRequest(f"No request message arrived within {REQUEST_WAIT_SECONDS:g} s.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request message is not valid JSON: {exc}.") from exc


def start(ws: Server, schema: type[GenerateRequest]) -> Relay:
    """Authenticate and validate the request message, then open its upstream stream."""
    message = read_request(ws)
    # A key in the handshake's headers wins; browsers cannot send one, so the
    # first message may carry it instead.
    sent = message.pop("api_key", None) if isinstance(message, dict) else None
    principal = authenticate(presented_key() or (str(sent) if sent is not None else None))
    if isinstance(principal, GatewayError):
        raise principal
    context.note_key(principal.name)
    state = gateway()
    generation = load_data(schema_for(schema, max_tokens_limit=state.settings.max_tokens),
                           message)
    opened = state.service.stream(generation, principal, client_probe(request.environ))
    return Relay(opened, state.settings.heartbeat_seconds, current_record())


class Watcher:
    """Read client messages during a generation; a cancel or a departure stops the stream."""

    def __init__(self, ws: Server, stream: TokenStream) -> None:
        self.stopped: str | None = None  # "cancel" or "left" once the stream was cut for it
        # threading is gevent's under the gunicorn worker, real threads elsewhere;
        # either way this reader wakes on the client's messages alone.
        threading.Thread(target=self._watch, args=(ws, stream), daemon=True,
                         name="websocket-watcher").start()

    def _watch(self, ws: Server, stream: TokenStream) -> None:
        """Wait for a cancel or the end of the connection, then stop the upstream."""
        while True:
            try:
                raw = ws.receive()
            except ConnectionClosed:
                self.stopped = "left"
                break
            try:
                if orjson.loads(raw) == CANCEL:
                    self.stopped = "cancel"
                    break
            except orjson.JSONDecodeError:
                continue  # only a cancel means anything during a generation
        # Shuts the upstream socket down, waking the relay blocked on it; the
        # backend sees its client leave and stops generating. The relay closes.
        stream.cancel()


def relay(ws: Server, opened: Relay) -> dict[str, Any]:
    """Send the stream's pieces as they arrive; return the message that ends it."""
    stream = opened.stream
    watcher = Watcher(ws, stream)
    answer = Answer()  # the tool calls, for the done message
    try:
        for pieces in opened.batches():
            # Silence ([]) needs no message: the library pings the client.
            for message in piece_messages(pieces, answer):
                ws.send(dumps(message))
    except Exception as exc:
        if watcher.stopped:  # the cut was ours, not the backend's: a cancellation
            return done_message(stream, cancelled=True)
        if isinstance(exc, (ConnectionClosed, OSError)):
            raise  # the client left while a piece was being sent
        if not isinstance(exc, GatewayError):
            log.exception("websocket stream of %s failed", stream.model)
        return error_message(exc)
    finally:
        opened.close()
    return done_message(stream, answer=answer)


def answer(ws: Server, schema: type[GenerateRequest]) -> dict[str, Any]:
    """Serve the request on ``ws``; return the message that ends the session."""
    try:
        opened = start(ws, schema)
    except ConnectionClosed:
        raise
    except Exception as exc:
        current_record().status = note(exc).status  # logged as REST logs it
        return error_message(exc)
    return relay(ws, opened)


def serve(ws: Server, schema: type[GenerateRequest]) -> None:
    """Answer one request on ``ws``, close it, and write the session's record."""
    record = current_record()
    record.status = SWITCHING_PROTOCOLS
    try:
        ws.send(dumps(answer(ws, schema)))
    except (ConnectionClosed, OSError):
        pass  # the client left: there is nobody to answer
    finally:
        # The server never closes this response (flask-sock gives gevent's server
        # no body), so the record is finished here; finishing happens once only.
        record.finish()
        close(ws)


def close(ws: Server) -> None:
    """Close the connection, cutting it if the client ignores the closing handshake."""
    with suppress(ConnectionClosed, OSError):
        ws.close()
    ws.thread.join(CLOSE_WAIT_SECONDS)
    if ws.thread.is_alive():
        with suppress(OSError):
            ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the library's reader thread


def check_handshake() -> None:
    """Refuse an upgrade without a usable WebSocket handshake, before flask-sock takes it."""
    if (request.endpoint or "").rsplit(".", 1)[-1] not in ENDPOINTS:
        return
    if not request.headers.get("Sec-WebSocket-Key"):
        raise BadRequest("The WebSocket handshake has no Sec-WebSocket-Key header.")
    if request.headers.get("Sec-WebSocket-Version") != "13":
        raise BadRequest("This server speaks WebSocket version 13 (RFC 6455).",
                         headers={"Sec-WebSocket-Version": "13"})


def view(schema: type[GenerateRequest]) -> Callable[[Server], None]:
    """Return the WebSocket view whose request messages ``schema`` loads."""

    def websocket(ws: Server) -> None:
        serve(ws, schema)

    # require_key lets the handshake through: the key may come in the first message.
    websocket.authenticates_itself = True  # type: ignore[attr-defined]
    return websocket


def configure(setup: BlueprintSetupState) -> None:
    """Bound message sizes by GATEWAY_MAX_BODY_BYTES and ping clients every heartbeat."""
    state = setup.app.extensions.get(EXTENSION_KEY)
    if state is not None:  # a host app's own SOCK_SERVER_OPTIONS are left alone
        setup.app.config.setdefault("SOCK_SERVER_OPTIONS", {
            "max_message_size": state.settings.max_body_bytes,
            "ping_interval": state.settings.heartbeat_seconds})


def register(blueprint: Blueprint) -> None:
    """Add the WebSocket routes to the gateway's ``blueprint``."""
    sock = Sock()
    for name, (path, schema) in ROUTES.items():
        sock.route(path, bp=blueprint, endpoint=f"{name}_ws")(view(schema))  # in ENDPOINTS
    blueprint.before_request(check_handshake)
    blueprint.record_once(configure)
