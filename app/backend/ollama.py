"""The Ollama adapter: gateway requests in, Ollama's native API out."""

from __future__ import annotations

import os
from typing import Any

import orjson
import requests

from app.backend.base import Completion, TokenStream, Usage
from app.backend.http import (
    make_session,
    prepare,
    raise_for_status,
    send,
    translate_errors,
    upstream_message,
)
from app.errors import BackendError

# Gateway option name -> Ollama option name.
OPTION_NAMES = {"max_tokens": "num_predict", "temperature": "temperature", "top_p": "top_p",
                "top_k": "top_k", "stop": "stop", "seed": "seed"}
ENDPOINTS = {"generate": "/api/generate", "chat": "/api/chat"}


def usage_of(data: dict[str, Any]) -> Usage:
    """Return the token counts in Ollama's final object."""
    return Usage(prompt_tokens=data.get("prompt_eval_count") or 0,
                 completion_tokens=data.get("eval_count") or 0)


def text_of(data: dict[str, Any]) -> str:
    """Return the generated text of a /api/generate or /api/chat object."""
    if "message" in data:
        return (data["message"] or {}).get("content") or ""
    return data.get("response") or ""


def read_line(stream: TokenStream, data: dict[str, Any]) -> str | None:
    """Return the piece in one streamed line; record the usage on the final one."""
    if data.get("done"):
        stream.finish(data.get("done_reason"), usage_of(data))
    return text_of(data)


def build_payload(kind: str, request: dict[str, Any], stream: bool) -> dict[str, Any]:
    """Translate a validated gateway request into an Ollama request body."""
    options = {OPTION_NAMES[k]: v for k, v in request.items()
               if k in OPTION_NAMES and v is not None}
    payload: dict[str, Any] = {"model": request["model"], "stream": stream, "options": options}
    if kind == "chat":
        payload["messages"] = request["messages"]
    else:
        payload["prompt"] = request["prompt"]
        if request.get("system"):
            payload["system"] = request["system"]
    return payload


class OllamaBackend:
    """Call one Ollama server over a pooled, per-process requests Session."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float,
                 pool_size: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._session_pid = 0

    @property
    def session(self) -> requests.Session:
        """Return this process's Session; a forked worker never shares its parent's."""
        if self._session is None or self._session_pid != os.getpid():
            self._session = make_session(self.pool_size)
            self._session_pid = os.getpid()
        return self._session

    def _post(self, path: str, payload: dict[str, Any], stream: bool) -> requests.Response:
        request = prepare("POST", self.base_url + path, orjson.dumps(payload))
        response = send(self.session, request, stream=stream, timeout=self.timeout)
        raise_for_status(response)
        return response

    def complete(self, kind: str, request: dict[str, Any]) -> Completion:
        """Run one generation to its end and return it whole."""
        response = self._post(ENDPOINTS[kind], build_payload(kind, request, False), False)
        with translate_errors():
            body = response.content
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BackendError("The model backend answered with a body that is not JSON.") \
                from exc
        if not isinstance(data, dict) or "error" in data:
            raise BackendError(f"The model backend failed: {upstream_message(body)}")
        return Completion(model=data.get("model") or request["model"], text=text_of(data),
                          done_reason=data.get("done_reason"), usage=usage_of(data))

    def stream(self, kind: str, request: dict[str, Any]) -> TokenStream:
        """Start a streamed generation; the caller must close the returned stream."""
        response = self._post(ENDPOINTS[kind], build_payload(kind, request, True), True)
        return TokenStream(response, request["model"], read_line, self.timeout[1])

    def _get_json(self, path: str, timeout: tuple[float, float]) -> dict[str, Any]:
        response = send(self.session, prepare("GET", self.base_url + path), stream=False,
                        timeout=timeout)
        raise_for_status(response)
        with translate_errors():
            body = response.content
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"The model backend's {path} is not JSON.") from exc

    def list_models(self) -> list[dict[str, Any]]:
        """Return the models the server has (Ollama's /api/tags entries)."""
        return self._get_json("/api/tags", self.timeout).get("models") or []

    def loaded_models(self) -> list[dict[str, Any]]:
        """Return the models in the server's memory (Ollama's /api/ps entries)."""
        return self._get_json("/api/ps", (self.timeout[0], 5.0)).get("models") or []

    def version(self, timeout: float) -> str:
        """Return the server's version; a cheap readiness probe."""
        return str(self._get_json("/api/version", (timeout, timeout)).get("version", ""))
