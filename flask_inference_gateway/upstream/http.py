"""HTTP plumbing of every backend call: the pooled session, timeouts and the error mapping.

This module is the one place where ``requests`` exceptions and upstream HTTP
statuses become the gateway's typed errors (``map_exception`` and
``error_for_status``; a test checks that every requests exception maps).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from flask_inference_gateway.core.errors import (
    BackendBusy,
    BackendError,
    BackendFailedRequest,
    BackendRejected,
    BackendStreamBroken,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    ModelNotFound,
)
from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.observability.context import request_id as current_request_id
from flask_inference_gateway.upstream.connection import POOL_CLASSES
from flask_inference_gateway.upstream.watch import client_left, track_connection

DEFAULT_RETRY_AFTER = "1"
USER_AGENT = "flask-inference-gateway/0.1"


def prepare(method: str, url: str, body: bytes | None = None,
            extra_headers: dict[str, str] | None = None) -> requests.PreparedRequest:
    """Return a ready-to-send request, skipping Session.prepare_request's merging work."""
    request = requests.PreparedRequest()
    request.method, request.url, request.body = method, url, body
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(extra_headers or {})}
    request_id = current_request_id()
    if request_id:
        headers["X-Request-ID"] = request_id
    if body is not None:
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    request.headers = CaseInsensitiveDict(headers)
    return request


def send(session: requests.Session, request: requests.PreparedRequest, *, stream: bool,
         timeout: tuple[float, float]) -> requests.Response:
    """Send ``request`` through the session's pooled adapter and return the response.

    Calling the adapter directly skips the Session's cookie, redirect, hook and
    environment handling: a backend call needs none of them, and they cost more
    than the rest of the gateway's per-request work.
    """
    adapter = session.get_adapter(request.url or "")
    with translate_errors():
        for _ in range(STALE_RETRIES):
            try:
                return adapter.send(request, stream=stream, timeout=timeout, verify=True,
                                    cert=None, proxies={})
            except requests.ConnectionError as exc:
                if not (stale(exc) and _REUSED.get()) or client_left():
                    raise
        return adapter.send(request, stream=stream, timeout=timeout, verify=True, cert=None,
                            proxies={})


# Servers close idle keep-alive connections (uvicorn under vLLM and llama.cpp's server
# after 5 s); one that closes as the pool hands the connection out resets the request
# before it is read. Such a request, on a reused connection that the client watch did
# not cut, is sent again on a new connection, twice at most.
STALE_RETRIES = 2
# Whether the current request's last connection came from the pool already open.
_REUSED: ContextVar[bool] = ContextVar("reused_connection", default=False)


def stale(exc: requests.ConnectionError) -> bool:
    """Return whether ``exc`` is a pooled connection closed under the request, before any
    answer: urllib3's ProtocolError, where a refused connection is a NewConnectionError."""
    return isinstance(exc.args[0] if exc.args else None, ProtocolError)


class PooledAdapter(HTTPAdapter):
    """An HTTPAdapter for backend traffic, which carries no cookies, proxies or client certs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pools: dict[str, Any] = {}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Make the pool manager, its pools of the gateway's connections (connection.py)."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES

    def get_connection_with_tls_context(self, request: requests.PreparedRequest, verify: Any,
                                        proxies: Any = None, cert: Any = None) -> Any:
        """Return the connection pool of the request's origin, found once per origin."""
        origin = (request.url or "").split("/", 3)[2]
        pool = self._pools.get(origin)
        if pool is None:
            pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
            watch_connections(pool)
            self._pools[origin] = pool
        return pool

    def request_url(self, request: requests.PreparedRequest, proxies: Any) -> str:
        """Return the path to request: backend calls never go through a proxy."""
        return request.path_url

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """Wrap urllib3's response without the cookie-jar and charset work."""
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw, response.reason = resp, resp.reason
        response.url, response.request, response.connection = req.url, req, self
        return response


def watch_connections(pool: Any) -> None:
    """Let a ClientWatch see which pooled connection its request takes (see watch.py),
    and note when each one went back to the pool (see ``close_idle``)."""
    take, put = pool._get_conn, pool._put_conn

    def get_conn(timeout: float | None = None) -> Any:
        connection = take(timeout)
        _REUSED.set(getattr(connection, "sock", None) is not None)
        track_connection(connection)
        return connection

    def put_conn(connection: Any) -> None:
        if connection is not None:
            connection.gateway_idle_since = time.monotonic()
        put(connection)

    pool._get_conn, pool._put_conn = get_conn, put_conn


def close_idle(session: requests.Session, older_than: float) -> int:
    """Close the pooled connections idle for ``older_than`` seconds; return how many.

    A burst of a thousand streams leaves a thousand keep-alive connections to
    the backend in the pool: closed once idle, they cost neither side a socket.
    A closed connection stays in the pool and reconnects when next taken.
    """
    closed, limit = 0, time.monotonic() - older_than
    for adapter in {id(a): a for a in session.adapters.values()}.values():
        for pool in getattr(adapter, "_pools", {}).values():
            # No request takes or returns one meanwhile: the queue's lock under
            # threads; gevent's queue has none and no other greenlet runs here.
            with getattr(pool.pool, "mutex", None) or nullcontext():
                for connection in pool.pool.queue:
                    idle_since = getattr(connection, "gateway_idle_since", None)
                    if getattr(connection, "sock", None) is not None and idle_since is not None \
                            and idle_since < limit:
                        connection.close()
                        closed += 1
    return closed


def make_session(pool_size: int) -> requests.Session:
    """Return a Session whose pool holds one connection per concurrent request."""
    session = requests.Session()
    # Retries are the router's decision, never urllib3's: a retried POST could
    # run a generation twice on the GPU.
    # pool_connections: backends (origins) kept; more than the gateway will ever
    # call, so the pools cached by PooledAdapter are never evicted and closed.
    adapter = PooledAdapter(pool_connections=256, pool_maxsize=pool_size, max_retries=0,
                             pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The environment's proxies must not silently reroute GPU traffic.
    session.trust_env = False
    return session


def call_timeout(timeouts: Timeouts, deadline: float, read: float) -> tuple[float, float]:
    """Return ``(connect, read)`` for one call, never reaching past ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BackendTimeout("The request ran out of time (GATEWAY_TOTAL_TIMEOUT).")
    return min(timeouts.connect, left), min(read, left)


def map_exception(exc: requests.RequestException) -> GatewayError:
    """Translate a requests exception into the gateway error it stands for."""
    cause = exc.args[0] if exc.args else None
    if isinstance(exc, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        # ConnectTimeout is also a ConnectionError: it is a timeout first.
        return BackendTimeout()
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        # Only raised while reading a body: the backend cut a stream short.
        return BackendStreamBroken()
    if isinstance(exc, requests.ConnectionError):
        return BackendUnavailable()
    return BackendError(f"The request to the model backend failed: {type(exc).__name__}.")


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise requests exceptions raised inside the block as gateway errors."""
    try:
        yield
    except requests.RequestException as exc:
        raise map_exception(exc) from exc


def stated_reason(body: bytes) -> str | None:
    """Return the reason a server gave in a JSON error body (``error``), if it gave one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):  # OpenAI-compatible servers nest it
        error = error.get("message")
    return str(error) if error else None


def upstream_message(body: bytes) -> str | None:
    """Return the error message in an upstream error body: its reason, or its plain text."""
    reason = stated_reason(body)
    if reason is not None or body[:1] in (b"{", b"["):
        return reason
    text = body.decode("utf-8", "replace").strip()[:500]
    # A proxy's HTML error page says nothing a client can use.
    return None if not text or text.startswith("<") else text


def error_for_status(status: int, body: bytes, retry_after: str | None = None) -> GatewayError:
    """Translate an upstream error status and body into a gateway error."""
    message = upstream_message(body)
    if status == 404:
        return ModelNotFound(message or ModelNotFound.message)
    if status in (429, 503):
        return BackendBusy(headers={"Retry-After": retry_after or DEFAULT_RETRY_AFTER},
                           **({"backend_message": message} if message else {}))
    if status == 504:
        return BackendTimeout()
    if status == 400 or status == 422:
        return BackendRejected(message or BackendRejected.message)
    if status == 500 and stated_reason(body):  # Ollama's to a bad schema or template, say
        return BackendFailedRequest(f"The model backend answered 500: {message}",
                                    backend_status=status)
    return BackendError(f"The model backend answered {status}"
                        + (f": {message}" if message else "."), backend_status=status)


def raise_for_status(response: requests.Response) -> None:
    """Raise the gateway error for a non-2xx upstream response, closing it first."""
    if response.status_code < 300:
        return
    try:
        body = response.content
    except requests.RequestException:
        body = b""
    finally:
        response.close()
    raise error_for_status(response.status_code, body, response.headers.get("Retry-After"))


def abort_response(response: requests.Response) -> None:
    """Close an upstream response now, so the backend sees its client leave."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        # shutdown() wakes a reader blocked on this socket in another thread;
        # close() alone would leave it (and the GPU) running until the next byte.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    response.close()


def read_json(response: requests.Response, what: str) -> Any:
    """Return the JSON body of a whole upstream response."""
    with translate_errors():
        body = response.content
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"The model backend's answer to {what} is not JSON.") from exc
