"""Bus: one Redis pub/sub connection per process, handing each channel's messages to its handler.

Admission listens on this process's wake channel; backend health on the
fleet's health channel. While Redis is down the bus reconnects every second;
what listens on it must not depend on every message arriving (admission
polls, health is probed).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)

Handler = Callable[[str], None]
WAIT_SECONDS = 0.25  # how long one read waits for a message (new channels join between)
LISTEN_TIMEOUT = 5.0  # a read of an announced message that takes longer: the connection is dead

_buses: dict[tuple[int, int], Bus] = {}
_lock = threading.Lock()


def bus_for(client: redis.Redis) -> Bus:
    """Return this process's bus on ``client``'s server."""
    key = (id(client), os.getpid())
    with _lock:
        if key not in _buses:
            _buses[key] = Bus(client)
        return _buses[key]


def listening_client(client: redis.Redis) -> redis.Redis:
    """Return a client like ``client`` whose reads may wait longer than a message's gap."""
    # The shared client gives up on a read after GATEWAY_REDIS_TIMEOUT (0.25 s): a
    # subscriber waiting a second for the next message must not count that as an outage.
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": LISTEN_TIMEOUT}
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class, **kwargs))


class Bus:
    """Deliver the messages of subscribed channels from a background thread."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._handlers: dict[str, Handler] = {}
        self._changed = threading.Event()
        self._started = False
        self._lock = threading.Lock()

    def on(self, channel: str, handler: Handler) -> None:
        """Call ``handler(message)`` for each message published on ``channel``."""
        with self._lock:
            self._handlers[channel] = handler
            self._changed.set()
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="gateway-bus", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except Exception as exc:  # Redis down: reconnect in a second
                log.debug("bus lost Redis, retrying: %s", exc)
                time.sleep(1.0)

    def _listen(self) -> None:
        pubsub = listening_client(self.client).pubsub(ignore_subscribe_messages=True)
        try:
            while True:
                if self._changed.is_set():
                    self._changed.clear()
                    pubsub.subscribe(*list(self._handlers))
                message = pubsub.get_message(timeout=WAIT_SECONDS)
                if message is not None and message["type"] == "message":
                    self._deliver(message["channel"].decode(), message["data"].decode())
        finally:
            pubsub.close()

    def _deliver(self, channel: str, data: str) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            try:
                handler(data)
            except Exception:  # one bad message must not stop the bus
                log.exception("handling a message on %s failed", channel)
