"""Token budgets and concurrent-stream caps per key, exact across workers with Redis.

Budgets count prompt + completion tokens in fixed one-minute windows. A key
over its budget is refused before its request reaches the GPU; usage is
charged when a generation ends, or is cut short, or is abandoned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from flask_inference_gateway.core.errors import LimitsUnavailable, RateLimited
from flask_inference_gateway.security.keys import Principal

log = logging.getLogger(__name__)

WINDOW = 60
STREAM_SLOT_TTL = 3600  # a worker killed mid-stream leaks its slots at most this long


class Counters(Protocol):
    """Where the counts live: Redis, or this process's memory."""

    def get(self, key: str) -> int: ...

    def add(self, key: str, amount: int, ttl: int) -> int: ...


class MemoryCounters:
    """Counters in this process only (one gunicorn worker)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> int:
        """Return the live value of ``key`` (0 when absent or expired)."""
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > time.monotonic() else 0

    def add(self, key: str, amount: int, ttl: int) -> int:
        """Add ``amount`` to ``key``, keep it ``ttl`` more seconds, return the new value."""
        with self._lock:
            value = self.get(key) + amount
            self._values[key] = (value, time.monotonic() + ttl)
            return value


class RedisCounters:
    """Counters in Redis, shared by every worker and replica."""

    def __init__(self, url: str, timeout: float) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout,
                                            socket_connect_timeout=timeout)

    def get(self, key: str) -> int:
        """Return the value of ``key`` (0 when absent)."""
        return int(self._client.get(key) or 0)

    def add(self, key: str, amount: int, ttl: int) -> int:
        """Add ``amount`` to ``key``, keep it ``ttl`` more seconds, return the new value."""
        pipe = self._client.pipeline()
        pipe.incrby(key, amount)
        pipe.expire(key, ttl)
        return int(pipe.execute()[0])


class UsageLedger:
    """Enforce per-key token budgets and stream caps; decide what a store outage means."""

    def __init__(self, counters: Counters, *, tokens_per_minute: int, max_streams: int,
                 fail_open: bool) -> None:
        self.counters = counters
        self.tokens_per_minute = tokens_per_minute
        self.max_streams = max_streams
        self.fail_open = fail_open
        self._outage = False

    def check_tokens(self, principal: Principal) -> None:
        """Refuse a key whose token budget for this minute is spent."""
        budget = self._budget(principal)
        if not budget:
            return
        window = int(time.time()) // WINDOW
        used = self._call(self.counters.get, f"gw:tpm:{principal.name}:{window}", default=0)
        if used >= budget:
            retry = WINDOW - int(time.time()) % WINDOW
            raise RateLimited(f"The token budget of {budget} tokens per minute is spent; "
                              "retry after the time in Retry-After.",
                              headers={"Retry-After": str(retry)}, limit="tokens")

    def charge(self, principal: Principal, tokens: int) -> None:
        """Count ``tokens`` against the key's budget for this minute."""
        if tokens <= 0 or not self._budget(principal):
            return
        window = int(time.time()) // WINDOW
        self._call(self.counters.add, f"gw:tpm:{principal.name}:{window}", tokens, 2 * WINDOW,
                   default=0)

    def open_stream(self, principal: Principal) -> Callable[[], None]:
        """Take one of the key's stream slots; return the function that gives it back."""
        cap = principal.max_streams if principal.max_streams is not None else self.max_streams
        if not cap:
            return _nothing
        key = f"gw:streams:{principal.name}"
        taken = self._call(self.counters.add, key, 1, STREAM_SLOT_TTL, default=None)
        if taken is None:  # the store is down and the gateway fails open
            return _nothing
        if taken > cap:
            self._call(self.counters.add, key, -1, STREAM_SLOT_TTL, default=None)
            raise RateLimited(f"This API key already has {cap} streams open; close one or "
                              "retry later.", headers={"Retry-After": "1"}, limit="streams")
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._call(self.counters.add, key, -1, STREAM_SLOT_TTL, default=None)

        return release

    def _budget(self, principal: Principal) -> int:
        if principal.tokens_per_minute is not None:
            return principal.tokens_per_minute
        return self.tokens_per_minute

    def _call(self, func: Callable[..., Any], *args: Any, default: Any) -> Any:
        """Run a store operation; on failure fail open (log once) or closed (503)."""
        try:
            result = func(*args)
        except Exception as exc:  # any store failure: redis, socket, timeout
            if not self.fail_open:
                raise LimitsUnavailable() from exc
            if not self._outage:
                self._outage = True
                log.warning("limit store unreachable, letting requests pass: %s", exc)
            return default
        if self._outage:
            self._outage = False
            log.warning("limit store reachable again")
        return result


def _nothing() -> None:
    """Release nothing."""
