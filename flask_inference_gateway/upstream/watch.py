"""Stop upstream work for a client that leaves while its request waits on a backend.

While a request waits for a backend's answer (headers, then the first token:
a model loading can take a minute), nothing is written to the client, so its
departure would go unnoticed and the GPU would keep working for nobody. Each
worker runs one loop that, every POLL_SECONDS, asks every waiting request
whether its client is still there; when it is gone, the request's upstream
socket is shut down, which ends the backend's generation and wakes the
waiting reader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# The upstream connection the current request is using, when it is watched.
_CURRENT: ContextVar[ClientWatch | None] = ContextVar("client_watch", default=None)
_WATCHING: set[ClientWatch] = set()
_loop_pid = 0


class ClientWatch:
    """Watch one request's client while the block runs; ``left`` tells what was seen."""

    def __init__(self, gone: Callable[[], bool]) -> None:
        self.gone = gone
        self.left = False
        self.connection: Any = None
        self.since = time.monotonic()

    def __enter__(self) -> ClientWatch:
        self._token = _CURRENT.set(self)
        _WATCHING.add(self)
        ensure_loop()
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCHING.discard(self)
        _CURRENT.reset(self._token)

    def check(self) -> None:
        """Shut the upstream connection down if the client has gone."""
        if self.left or not self.gone():
            return
        self.left = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def track_connection(connection: Any) -> None:
    """Note the upstream connection that the current request's next call uses."""
    watch = _CURRENT.get()
    if watch is not None:
        watch.connection = connection


def client_left() -> bool:
    """Return whether the current request's watch cut its upstream connection."""
    watch = _CURRENT.get()
    return watch is not None and watch.left


def ensure_loop() -> None:
    """Start this process's watch loop, once."""
    global _loop_pid
    if _loop_pid != os.getpid():
        _loop_pid = os.getpid()
        threading.Thread(target=_loop, name="gateway-client-watch", daemon=True).start()


def _loop() -> None:
    while True:
        time.sleep(POLL_SECONDS)
        started_before = time.monotonic() - POLL_SECONDS
        for watch in list(_WATCHING):
            if watch.since <= started_before:
                try:
                    watch.check()
                except Exception:  # one bad check must not end the loop
                    log.exception("client watch failed")
