"""One Redis client per process and URL, and what an outage of it means.

Every shared structure (admission slots, stream slots, token budgets, keys,
backend health) goes through ``connect`` and guards its calls with an
``Outage``: fail open (carry on without Redis, one warning per outage) or
fail closed (503 ``limits_unavailable``), as GATEWAY_REDIS_FAIL_OPEN says.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from flask_inference_gateway.core.errors import LimitsUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_clients: dict[tuple[str, float, int], redis.Redis] = {}
_lock = threading.Lock()


# Connections one process may open to Redis. redis-py's pool refuses the 101st
# by default, and a gevent worker runs up to GATEWAY_WORKER_CONNECTIONS (1000)
# requests at once; past this many, a call waits (up to its timeout) for one.
MAX_CONNECTIONS = 1000


def connect(url: str, timeout: float) -> redis.Redis:
    """Return this process's client for ``url`` (a pool of connections, timed calls)."""
    # Keyed by pid too: a client made before gunicorn forks must not be shared.
    key = (url, timeout, os.getpid())
    with _lock:
        client = _clients.get(key)
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout)
            client = redis.Redis(connection_pool=pool)
            _clients[key] = client
        return client


def close_idle_connections() -> None:
    """Close this process's idle Redis connections; the next call that needs one reconnects."""
    with _lock:
        clients = [c for (_, _, pid), c in _clients.items() if pid == os.getpid()]
    for client in clients:
        client.connection_pool.disconnect(inuse_connections=False)


def instance_id() -> str:
    """Return a name for this process, unique in the fleet (host, pid, random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Outage:
    """Run store calls; on failure fail open (warn once per outage) or closed (503)."""

    def __init__(self, what: str, *, fail_open: bool) -> None:
        self.what = what
        self.fail_open = fail_open
        self.down = False

    def call(self, func: Callable[..., T], *args: Any, default: T) -> T:
        """Return ``func(*args)``; on a store failure, ``default`` (open) or raise (closed)."""
        try:
            result = func(*args)
        except Exception as exc:  # any store failure: redis, socket, timeout, script
            self.failed(exc)
            return default
        self.recovered()
        return result

    def failed(self, exc: BaseException) -> None:
        """Note a failed store call; raise LimitsUnavailable when failing closed."""
        if not self.down:
            self.down = True
            action = "carrying on without it" if self.fail_open else "refusing requests"
            log.warning("%s: Redis unreachable, %s: %s", self.what, action, exc)
        if not self.fail_open:
            raise LimitsUnavailable() from exc

    def recovered(self) -> None:
        """Note a store call that worked again."""
        if self.down:
            self.down = False
            log.warning("%s: Redis reachable again", self.what)


class Keeper:
    """Call ``renew`` every ``interval`` seconds from one background thread (leases' lives)."""

    def __init__(self, renew: Callable[[], None], interval: float, what: str) -> None:
        self.renew = renew
        self.interval = interval
        self.what = what
        self._started = False

    def ensure_running(self) -> None:
        """Start the renewing thread, once."""
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="gateway-lease-keeper", daemon=True).start()

    def _run(self) -> None:
        failing = False
        while True:
            time.sleep(self.interval)
            try:
                self.renew()
                failing = False
            except Exception as exc:  # Redis down: the leases may lapse; their users cope
                if not failing:
                    log.warning("could not renew %s in Redis: %s", self.what, exc)
                failing = True
