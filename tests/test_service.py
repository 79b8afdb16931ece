"""Policy: default model, model-list cache, readiness."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from app.backend import BackendPool, Completion, Router, Timeouts, Usage
from app.backend.base import Probe
from app.backend.router import never_gone
from app.errors import BackendUnavailable
from app.security.keys import Principal
from app.service import InferenceService, client_watch
from flask import Flask


class StubBackend:
    kind = "ollama"
    base_url = "http://gpu:11434"
    timeouts = Timeouts()

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.down = False

    def complete(self, kind: str, request: dict[str, Any],
                 deadline: float | None = None) -> Completion:
        self.calls.append((kind, request))
        return Completion(request["model"], "text", "stop", Usage(1, 1))

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        self.calls.append(("tags", None))
        return [{"id": "llama3.2:latest", "object": "model", "created": 0,
                 "owned_by": "ollama", "details": {}}]

    def probe(self, timeout: float) -> Probe:
        if self.down:
            raise BackendUnavailable()
        return Probe(self.list_models(), set(), "0.12.0")


def service(cache: float = 10.0) -> tuple[InferenceService, StubBackend]:
    backend = StubBackend()
    router = Router(BackendPool([backend]), timeouts=Timeouts())  # type: ignore[list-item]
    return InferenceService(router, default_model="llama3.2",
                            models_cache_seconds=cache), backend


@pytest.mark.parametrize(("request_model", "sent"), [(None, "llama3.2"), ("qwen", "qwen")],
                         ids=["default", "explicit"])
def test_default_model(request_model: str | None, sent: str) -> None:
    svc, backend = service()
    request = {"prompt": "x", **({"model": request_model} if request_model else {})}
    svc.complete("generate", request, Principal("tester"))
    assert backend.calls[0][1]["model"] == sent


@pytest.mark.parametrize(("cache", "fetches"), [(10.0, 1), (0.0, 3)], ids=["cached", "off"])
def test_models_are_cached(cache: float, fetches: int) -> None:
    svc, backend = service(cache)
    for _ in range(3):
        models = svc.models()
    assert [c for c in backend.calls if c[0] == "tags"] == [("tags", None)] * fetches
    assert models[0]["id"] == "llama3.2:latest"


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_readiness(down: bool) -> None:
    svc, backend = service()
    backend.down = down
    ready, statuses = svc.readiness()
    assert ready is not down
    assert statuses[0]["url"] == "http://gpu:11434"
    assert statuses[0]["kind"] == "ollama"
    assert ("error" in statuses[0]) is down
    assert statuses[0]["models"] == ([] if down else ["llama3.2", "llama3.2:latest"])


def test_client_watch_sees_a_closed_client_without_reading_its_data() -> None:
    ours, client = socket.socketpair()
    with Flask(__name__).test_request_context(environ_base={"gunicorn.sock": ours}):
        gone = client_watch()
    assert gone() is False  # open, nothing sent
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert gone() is False and ours.recv(100) == b"GET / HTTP/1.1\r\n"  # peeked, not eaten
    client.close()
    assert gone() is True
    ours.close()
    assert gone() is True  # a socket already closed on our side counts as gone


def test_without_a_server_socket_the_client_is_always_there() -> None:
    assert client_watch() is never_gone
