"""A WebSocket client of the gateway's /ws routes for assertions (websocket-client)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import websocket

WS_ROUTES = {"generate": "/v1/generate/ws", "chat": "/v1/chat/ws"}
MAX_MESSAGES = 20_000


def ws_url(http_url: str) -> str:
    """Return the ws:// form of an http:// base URL."""
    return "ws" + http_url.removeprefix("http")


def request_for(kind: str, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    """Return a generate or chat request message whose prompt is ``prompt``."""
    if kind == "chat":
        return {"messages": [{"role": "user", "content": prompt}], **extra}
    return {"prompt": prompt, **extra}


def connect(url: str, headers: dict[str, str] | None = None,
            timeout: float = 5) -> websocket.WebSocket:
    """Open a WebSocket; every later read or write fails after ``timeout`` seconds."""
    return websocket.create_connection(
        url, timeout=timeout, header=[f"{k}: {v}" for k, v in (headers or {}).items()])


@dataclass
class Session:
    """What the server sent on one connection, each message stamped with its arrival."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds since the request was sent
    close_code: int | None = None  # None: the connection ended without a close frame

    @property
    def text(self) -> str:
        """Return the text of every token message, joined."""
        return "".join(m["text"] for m in self.messages if m["type"] == "token")

    @property
    def last(self) -> dict[str, Any]:
        """Return the last message (done or error)."""
        return self.messages[-1]


def read_all(ws: websocket.WebSocket, started: float | None = None,
             limit_s: float = 10, session: Session | None = None) -> Session:
    """Read messages until the server closes the connection; fail past ``limit_s``."""
    started = time.monotonic() if started is None else started
    session = session or Session()
    while True:
        at = time.monotonic() - started
        assert at < limit_s and len(session.messages) < MAX_MESSAGES, session.messages[-3:]
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketConnectionClosedException:
            return session
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            session.close_code = int.from_bytes(frame.data[:2], "big") if frame.data else None
            return session
        if opcode == websocket.ABNF.OPCODE_TEXT:
            session.messages.append(json.loads(frame.data))
            session.times.append(at)


def exchange(url: str, request: Any, headers: dict[str, str] | None = None,
             limit_s: float = 10) -> Session:
    """Open a connection, send ``request`` (encoded unless a str), read it all, close it."""
    ws = connect(url, headers)
    try:
        started = time.monotonic()
        ws.send(request if isinstance(request, str) else json.dumps(request))
        return read_all(ws, started, limit_s)
    finally:
        hang_up(ws)


def hang_up(ws: websocket.WebSocket) -> None:
    """Close the connection and its socket, also after the server's close frame."""
    ws.close(timeout=1)  # a no-op once the server's close frame was answered
    ws.shutdown()


def read_until_token(ws: websocket.WebSocket, limit_s: float = 5) -> dict[str, Any]:
    """Read the first message, which must be a token message."""
    ws.settimeout(limit_s)
    message = json.loads(ws.recv())
    assert message["type"] == "token", message
    return message
