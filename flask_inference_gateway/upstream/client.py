"""What every model-server adapter shares: a pooled session and the gateway's timeouts."""

from __future__ import annotations

import os
from typing import Any

import orjson
import requests

from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.upstream.http import (
    call_timeout,
    close_idle,
    make_session,
    prepare,
    raise_for_status,
    read_json,
    send,
)
from flask_inference_gateway.upstream.stream import LineDecoder, TokenStream


class BackendClient:
    """One model server: a pooled Session per process, JSON in and out, every call timed."""

    kind = "http"

    def __init__(self, base_url: str, *, timeouts: Timeouts, pool_size: int,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self.pool_size = pool_size
        self.headers = headers or {}
        self._session: requests.Session | None = None
        self._session_pid = 0

    @property
    def session(self) -> requests.Session:
        """Return this process's Session; a forked worker never shares its parent's."""
        if self._session is None or self._session_pid != os.getpid():
            self._session = make_session(self.pool_size)
            self._session_pid = os.getpid()
        return self._session

    def close_idle(self, older_than: float) -> int:
        """Close this process's connections to the server idle for ``older_than`` seconds."""
        if self._session is None or self._session_pid != os.getpid():
            return 0
        return close_idle(self._session, older_than)

    def post(self, path: str, payload: dict[str, Any], *, stream: bool,
             timeout: tuple[float, float]) -> requests.Response:
        """POST ``payload`` as JSON; raise the gateway error for an error status."""
        request = prepare("POST", self.base_url + path, orjson.dumps(payload), self.headers)
        response = send(self.session, request, stream=stream, timeout=timeout)
        raise_for_status(response)
        return response

    def get_json(self, path: str, timeout: tuple[float, float]) -> Any:
        """GET ``path`` and return its JSON body."""
        request = prepare("GET", self.base_url + path, None, self.headers)
        response = send(self.session, request, stream=False, timeout=timeout)
        raise_for_status(response)
        return read_json(response, path)

    def post_whole(self, path: str, payload: dict[str, Any], deadline: float | None,
                   read: float) -> Any:
        """POST ``payload`` and return the JSON answer, waiting ``read`` at most."""
        deadline = deadline or self.timeouts.deadline()
        response = self.post(path, payload, stream=False,
                             timeout=call_timeout(self.timeouts, deadline, read))
        return read_json(response, path)

    def post_stream(self, path: str, payload: dict[str, Any], decode: LineDecoder,
                    model: str, deadline: float | None) -> TokenStream:
        """POST ``payload`` and return its streamed answer; the caller owns (closes) it."""
        deadline = deadline or self.timeouts.deadline()
        # Servers send their headers with the first token: the first-token timeout.
        response = self.post(path, payload, stream=True,
                             timeout=call_timeout(self.timeouts, deadline,
                                                  self.timeouts.first_token))
        return TokenStream(response, model, decode, self.timeouts, deadline)
