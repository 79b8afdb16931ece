"""Ollama's routes that generate nothing: model lists, show, version, and model management.

Lists are unions over the healthy backends. Model management (pull, push,
create, copy, delete) needs an admin key and reaches every healthy Ollama
backend, one after another: pull and create run on each of them (streamed:
each one's progress lines in turn), copy and delete on those that have the
model, push on the first that has it. It takes no admission slot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from flask import Response

from flask_inference_gateway.api.common import json_response
from flask_inference_gateway.api.ollama.wire import NDJSON, error_line
from flask_inference_gateway.api.relay import SSE_HEADERS
from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.errors import (
    Forbidden,
    GatewayError,
    ModelNotFound,
    NoBackendAvailable,
)
from flask_inference_gateway.observability import context
from flask_inference_gateway.routing.pool import Node, aliases
from flask_inference_gateway.routing.router import Router
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.upstream.ollama import ByteStream, OllamaBackend

log = logging.getLogger(__name__)

QUICK_READ = 30.0  # seconds: show, ps, version, copy and delete answer at once
ADMIN_ONLY = ("Model management needs an admin API key ('flask keys create --admin'); "
              "with authentication off (GATEWAY_AUTH_DISABLED) it is off too.")


def current_router() -> Router:
    """Return the router of the current gateway."""
    return gateway().service.router


def ollama_nodes() -> list[tuple[Node, OllamaBackend]]:
    """Return the healthy Ollama backends, each with its adapter."""
    return [(node, node.backend) for node in current_router().pool.nodes_of("ollama")
            if isinstance(node.backend, OllamaBackend)]


def rfc3339(unix: int) -> str:
    """Return Unix time as RFC 3339."""
    return datetime.fromtimestamp(unix, timezone.utc).isoformat().replace("+00:00", "Z")


def tag_entry(model: dict[str, Any]) -> dict[str, Any]:
    """Return one of the service's model objects as an /api/tags entry."""
    details = dict(model.get("details") or {})
    known = {key: details.pop(key) for key in ("size", "digest", "modified_at") if key in details}
    name = model["id"]
    # OpenAI-compatible backends give no digest: a stable stand-in keeps clients' keys unique.
    return {"name": name, "model": name,
            "modified_at": known.get("modified_at") or rfc3339(model.get("created") or 0),
            "size": known.get("size") or 0,
            "digest": known.get("digest") or hashlib.sha256(name.encode()).hexdigest(),
            "details": details}


def tags() -> dict[str, Any]:
    """Return every model the healthy backends serve, in /api/tags' shape."""
    return {"models": [tag_entry(model) for model in gateway().service.models()]}


def processes() -> dict[str, Any]:
    """Return the models in the Ollama backends' memory (the union of their /api/ps)."""
    found: dict[str, dict[str, Any]] = {}
    failure: GatewayError | None = None
    answered = False
    for _node, backend in ollama_nodes():
        try:
            entries = backend.loaded_models(QUICK_READ)
        except GatewayError as exc:
            failure = exc
            continue
        answered = True
        for entry in entries:
            found.setdefault(entry.get("name") or entry.get("model", ""), entry)
    if failure is not None and not answered:
        raise failure
    return {"models": list(found.values())}


def version() -> dict[str, Any]:
    """Return the first answering Ollama backend's version, else the gateway's."""
    for node, backend in ollama_nodes():
        try:
            return {"version": node.version or backend.version(QUICK_READ)}
        except GatewayError:
            continue
    try:
        return {"version": metadata.version("flask-inference-gateway")}
    except metadata.PackageNotFoundError:
        return {"version": "0.0.0"}


def model_of(body: dict[str, Any]) -> str:
    """Return the model a passed-through body names ('model', or the older 'name')."""
    return body.get("model") or body["name"]


def subject(path: str, body: dict[str, Any]) -> str:
    """Return the model a management request acts on (copy: its source)."""
    return body["source"] if path == "/api/copy" else model_of(body)


def may_have(node: Node, model: str) -> bool:
    """Return whether ``node`` lists ``model``, or has not told yet."""
    return node.serves(model) is not False


def show(body: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Return /api/show of a backend that has the model; a minimal one for OpenAI's."""
    model = model_of(body)
    context.note_model(model)
    if not principal.may_use(model):
        raise Forbidden(f"This API key may not use the model '{model}'.")
    for node, backend in ollama_nodes():
        if may_have(node, model):
            try:
                return backend.forward_json("POST", "/api/show", body,
                                            read_timeout=QUICK_READ) or {}
            except ModelNotFound:
                continue
    # Not on an Ollama backend: an OpenAI-compatible one may list it; it tells no more.
    if any(model in aliases(m["id"]) for m in gateway().service.models()):
        return {"modelfile": "", "parameters": "", "template": "", "details": {},
                "model_info": {}, "capabilities": ["completion"]}
    raise ModelNotFound(f"model '{model}' not found")


def unload(model: str) -> None:
    """Ask every healthy Ollama backend that may hold ``model`` to free its memory now."""
    for node, backend in ollama_nodes():
        if may_have(node, model):
            try:
                backend.forward_json("POST", "/api/generate",
                                     {"model": model, "keep_alive": 0, "stream": False},
                                     read_timeout=QUICK_READ)
            except ModelNotFound:
                continue
            current_router().probe(node)  # residency changed: route by it at once


def require_admin(principal: Principal) -> None:
    """Refuse model management to a key that is not an admin's."""
    if not principal.admin:
        raise Forbidden(ADMIN_ONLY)


Target = tuple[Node, OllamaBackend]


def targets(path: str, body: dict[str, Any]) -> list[Target]:
    """Return the Ollama backends a management request goes to, in order."""
    nodes = ollama_nodes()
    if not nodes:
        raise NoBackendAvailable("No healthy Ollama backend to manage models on.",
                                 headers={"Retry-After": "1"})
    if path in ("/api/pull", "/api/create"):
        return nodes
    model = subject(path, body)
    having = [(node, backend) for node, backend in nodes if may_have(node, model)]
    if not having:
        raise ModelNotFound(f"model '{model}' not found")
    return having[:1] if path == "/api/push" else having


def manage(method: str, path: str, body: dict[str, Any], principal: Principal) -> Response:
    """Run a model-management request on its backends; stream progress unless told not to."""
    require_admin(principal)
    context.note_model(subject(path, body))
    nodes = targets(path, body)
    if path in ("/api/pull", "/api/push", "/api/create") and body.get("stream") is not False:
        return relay_progress(nodes, method, path, body)
    return run_on_each(nodes, method, path, body)


def run_on_each(nodes: list[Target], method: str, path: str, body: dict[str, Any]) -> Response:
    """Run a request on each backend in turn; answer like Ollama (the last backend's body)."""
    answer: Any = None
    done = 0
    for node, backend in nodes:
        try:
            answer = backend.forward_json(method, path, body)
        except ModelNotFound:
            continue  # copy or delete: this one did not have the model after all
        except GatewayError as exc:
            log.warning("%s failed on %s after %d backends: %s", path, node.url, done,
                        exc.message)
            raise
        done += 1
        current_router().probe(node)  # its model list changed: route by the new one at once
    if not done:
        raise ModelNotFound(f"model '{subject(path, body)}' not found")
    return json_response(answer) if answer is not None else Response(status=200)


def relay_progress(nodes: list[Target], method: str, path: str, body: dict[str, Any]) -> Response:
    """Relay each backend's progress lines in turn, as NDJSON."""
    # The first request is sent now, so its refusal is still an HTTP status.
    first = nodes[0][1].forward_stream(method, path, body)
    # The lines are written after the view returned, outside the app context.
    lines = progress_lines(current_router(), first, nodes, method, path, body)
    response = Response(lines, mimetype=NDJSON, headers=SSE_HEADERS)

    def close() -> None:
        lines.close()
        first.close()  # a generator that never started closes nothing itself

    response.call_on_close(close)
    return response


def progress_lines(router: Router, first: ByteStream, nodes: list[Target],
                   method: str, path: str, body: dict[str, Any]) -> Iterator[bytes]:
    """Yield every backend's progress lines; end with an error line if one fails."""
    progress = first
    try:
        for index, (node, backend) in enumerate(nodes):
            if index:
                progress = backend.forward_stream(method, path, body)
            try:
                yield from progress
            finally:
                progress.close()
            router.probe(node)
    except GatewayError as exc:
        log.warning("%s failed on %s: %s", path, node.url, exc.message)
        yield error_line(exc)
