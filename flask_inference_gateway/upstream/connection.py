"""The pooled connection under every backend call, with less work per request than urllib3's.

Two of urllib3's per-request costs were each a few per cent of the
gateway's CPU in the json-fast and stream-1000 profiles (docs/benchmarks.md):

- http.client sends a request's head and its body in two ``send`` calls;
  a body of up to ``ONE_WRITE_LIMIT`` bytes goes out with the head in one.
- http.client parses the response head with the ``email`` package's feed
  parser; a head of plain ``Name: value`` lines is split directly into the
  same ``HTTPMessage``, and any other head still goes through the parser.

The pools of ``PooledAdapter`` (http.py) make these connections; the
behaviour seen through requests and urllib3 is unchanged.

urllib3's check that a pooled connection is still open stays as it is,
though it is another 4 %: it polls through gevent's ``select.poll``, which
switches to the hub once per request. That switch keeps the hub fair; with
a poll that does not switch, json-fast's p99 went from 150 ms to 0.7-1 s
while its median fell.
"""

from __future__ import annotations

import http.client
import types
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from flask_inference_gateway.core.heads import parse_headers

ONE_WRITE_LIMIT = 64 * 1024  # larger bodies are not copied behind the head
def _reading_heads_fast(function: types.FunctionType) -> types.FunctionType:
    """Return http.client's ``function`` with its ``parse_headers`` replaced by ours."""
    names = dict(function.__globals__, parse_headers=parse_headers)
    return types.FunctionType(function.__code__, names, function.__name__,
                              function.__defaults__, function.__closure__)


class FastHeadResponse(http.client.HTTPResponse):
    """http.client's response, its head parsed by ``parse_headers``."""

    # The same code as http.client's begin(), looking up our parse_headers.
    begin = _reading_heads_fast(http.client.HTTPResponse.begin)  # type: ignore[arg-type]


class OneWriteMixin:
    """Send a request's head with its body in one write; read the response's head fast."""

    response_class = FastHeadResponse
    _holding = False  # the next send is the head: hold it for the body
    _held: bytes | None = None

    def request(self, *args: Any, **kwargs: Any) -> None:
        """Send a request (urllib3's ``request``), its head and a small body together."""
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._holding = False
            self._flush()

    def endheaders(self, message_body: Any = None, *, encode_chunked: bool = False) -> None:
        """Finish the head; it is sent with the body's first piece."""
        self._holding = True
        super().endheaders(message_body, encode_chunked=encode_chunked)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        """Send ``data``, after the held head (in the same write when it is small)."""
        if self._holding:
            self._holding, self._held = False, bytes(data)
            return
        held, self._held = self._held, None
        if held is not None:
            if len(data) <= ONE_WRITE_LIMIT:
                data = held + bytes(data)
            else:
                super().send(held)  # type: ignore[misc]
        super().send(data)  # type: ignore[misc]

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            super().send(held)  # type: ignore[misc]


class GatewayHTTPConnection(OneWriteMixin, HTTPConnection):
    """urllib3's HTTP connection with the gateway's cheaper request path."""


class GatewayHTTPSConnection(OneWriteMixin, HTTPSConnection):
    """urllib3's HTTPS connection with the gateway's cheaper request path."""


class GatewayHTTPPool(HTTPConnectionPool):
    """A pool of ``GatewayHTTPConnection``."""

    ConnectionCls = GatewayHTTPConnection


class GatewayHTTPSPool(HTTPSConnectionPool):
    """A pool of ``GatewayHTTPSConnection``."""

    ConnectionCls = GatewayHTTPSConnection


POOL_CLASSES = {"http": GatewayHTTPPool, "https": GatewayHTTPSPool}
