"""Token budgets and concurrent-stream caps per key, exact across workers with Redis.

Budgets count prompt + completion tokens in fixed one-minute windows. Each
request reserves its worst case (prompt estimate + max_tokens) in its window
before it reaches the GPU, atomically, so concurrent requests on any number of
workers and replicas never reserve more than the budget; when it ends (or is
cut short, or abandoned) it settles once: what it used stays charged, the rest
of the reservation goes back. docs/security.md says why a request larger than
the whole budget is clamped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis

from flask_inference_gateway.core.errors import LimitsUnavailable, RateLimited
from flask_inference_gateway.fleet.semaphore import MemorySemaphores, Semaphores
from flask_inference_gateway.fleet.store import Outage
from flask_inference_gateway.security.keys import Principal

log = logging.getLogger(__name__)

WINDOW = 60
# A window's counter outlives its minute so that a request reserved in it settles
# there; one still running after this long settles into a forgotten window (a no-op).
BUDGET_TTL = 11 * WINDOW
FAILED_OPEN = object()  # what a store call returns while the store is down and we fail open

# KEYS[1] the window's counter (used + reserved); ARGV wanted, least, limit, ttl.
# Grants min(wanted, what is left), or nothing when that is under least.
RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[3]) - used)
if grant < tonumber(ARGV[2]) then return {0, used} end
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {grant, used}
"""
# KEYS[1] the window's counter; ARGV delta. A forgotten window stays forgotten.
SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


class Counters(Protocol):
    """Where the counts live: Redis, or this process's memory."""

    def get(self, key: str) -> int: ...

    def add(self, key: str, amount: int, ttl: int) -> int: ...

    def reserve(self, key: str, wanted: int, least: int, limit: int,
                ttl: int) -> tuple[int, int]: ...

    def settle(self, key: str, delta: int) -> None: ...


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

    def reserve(self, key: str, wanted: int, least: int, limit: int,
                ttl: int) -> tuple[int, int]:
        """Add min(wanted, limit - value) to ``key`` unless under ``least``; return it, value."""
        with self._lock:
            if key not in self._values:  # a new window: forget the expired ones
                self._sweep()
            used = self.get(key)
            grant = min(wanted, limit - used)
            if grant < least:
                return 0, used
            self._values[key] = (used + grant, time.monotonic() + ttl)
            return grant, used

    def settle(self, key: str, delta: int) -> None:
        """Add ``delta`` to ``key`` if it is still live, keeping its expiry."""
        with self._lock:
            value, expires = self._values.get(key, (0, 0.0))
            if expires > time.monotonic():
                self._values[key] = (value + delta, expires)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]


class RedisCounters:
    """Counters in Redis, shared by every worker and replica."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    def get(self, key: str) -> int:
        """Return the value of ``key`` (0 when absent)."""
        return int(self._client.get(key) or 0)

    def add(self, key: str, amount: int, ttl: int) -> int:
        """Add ``amount`` to ``key``, keep it ``ttl`` more seconds, return the new value."""
        pipe = self._client.pipeline()
        pipe.incrby(key, amount)
        pipe.expire(key, ttl)
        return int(pipe.execute()[0])

    def reserve(self, key: str, wanted: int, least: int, limit: int,
                ttl: int) -> tuple[int, int]:
        """Add min(wanted, limit - value) to ``key`` unless under ``least``; return it, value."""
        grant, used = self._reserve(keys=[key], args=[wanted, least, limit, ttl])
        return int(grant), int(used)

    def settle(self, key: str, delta: int) -> None:
        """Add ``delta`` to ``key`` if it still exists, keeping its expiry."""
        self._settle(keys=[key], args=[delta])


class Reservation:
    """Tokens set aside in one window for one request; settled once with what it used."""

    def __init__(self, max_tokens: int, *, reserved: int = 0, key: str = "",
                 ledger: UsageLedger | None = None) -> None:
        self.max_tokens = max_tokens  # the completion tokens the request may generate
        self.reserved = reserved
        self.key = key
        self._ledger = ledger
        self._lock = threading.Lock()
        self._settled = False

    def settle(self, used: int) -> None:
        """Charge ``used`` tokens and give back the rest of the reservation; once, never raises."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
        if self._ledger is not None and used != self.reserved:
            self._ledger.adjust(self.key, used - self.reserved)


def estimate_tokens(texts: Iterable[str]) -> int:
    """Estimate the tokens of ``texts`` (about 4 characters each), as prompts are estimated."""
    return max(1, sum(len(text) for text in texts) // 4)


def plan(budget: int, prompt: int, max_tokens: int) -> tuple[int, int]:
    """Return the tokens a request wants reserved, and the fewest it can run with.

    The worst case, all or nothing; a worst case larger than the whole budget
    could never fit, so it takes what is left of the window, with at least its
    prompt and one token (its max_tokens is then clamped to the rest).
    """
    worst = prompt + max_tokens
    if worst <= budget:
        return worst, worst
    return budget, prompt + min(max_tokens, 1)


class UsageLedger:
    """Enforce per-key token budgets and stream caps; decide what a store outage means."""

    def __init__(self, counters: Counters, *, tokens_per_minute: int, max_streams: int,
                 fail_open: bool, streams: Semaphores | None = None) -> None:
        """``streams`` counts each key's open streams (default: in this process)."""
        self.counters = counters
        self.streams = streams or MemorySemaphores()
        self.tokens_per_minute = tokens_per_minute
        self.max_streams = max_streams
        self.outage = Outage("token budgets and stream caps", fail_open=fail_open)

    def reserve(self, principal: Principal, prompt_tokens: int,
                max_tokens: int = 0) -> Reservation:
        """Reserve a request's worst case in the key's window, or refuse it (429)."""
        budget = self._budget(principal)
        if not budget:
            return Reservation(max_tokens)
        now = time.time()
        key = f"gw:tpm:{principal.name}:{int(now) // WINDOW}"
        wanted, least = plan(budget, prompt_tokens, max_tokens)
        granted, used = self.outage.call(self.counters.reserve, key, wanted, least, budget,
                                         BUDGET_TTL, default=(-1, 0))
        if granted < 0:  # the store is down and the gateway fails open
            return Reservation(max_tokens)
        if not granted:
            raise refusal(budget, max(0, budget - used), least, WINDOW - int(now) % WINDOW)
        return Reservation(min(max_tokens, granted - prompt_tokens), reserved=granted,
                           key=key, ledger=self)

    def adjust(self, key: str, delta: int) -> None:
        """Add ``delta`` to a window's count; a store outage is logged, never raised."""
        try:
            self.outage.call(self.counters.settle, key, delta, default=None)
        except LimitsUnavailable:  # failing closed: the request is over, nothing to refuse
            pass

    def open_stream(self, principal: Principal) -> Callable[[], None]:
        """Take one of the key's stream slots; return the function that gives it back."""
        cap = principal.max_streams if principal.max_streams is not None else self.max_streams
        if not cap:
            return _nothing
        name = f"gw:streams:{principal.name}"
        token = self._call(self.streams.take, name, cap, default=FAILED_OPEN)
        if token is FAILED_OPEN:  # the store is down and the gateway fails open
            return _nothing
        if token is None:
            raise RateLimited(f"This API key already has {cap} streams open; close one or "
                              "retry later.", headers={"Retry-After": "1"}, limit="streams")
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._call(self.streams.give, name, token, default=None)

        return release

    def _budget(self, principal: Principal) -> int:
        if principal.tokens_per_minute is not None:
            return principal.tokens_per_minute
        return self.tokens_per_minute

    def _call(self, func: Callable[..., Any], *args: Any, default: Any) -> Any:
        """Run a store operation; on failure fail open (log once) or closed (503)."""
        return self.outage.call(func, *args, default=default)


def refusal(budget: int, left: int, need: int, retry: int) -> RateLimited:
    """Return the 429 of a request whose tokens do not fit in what is left of the window."""
    if need > budget:  # it would not fit in a fresh window either: retrying cannot help
        return RateLimited(f"This request needs at least {need} tokens, more than the whole "
                           f"token budget of {budget} tokens per minute; shorten its prompt.",
                           limit="tokens")
    return RateLimited(f"The token budget of {budget} tokens per minute has {left} tokens "
                       f"left in this minute and this request needs {need}; retry after the "
                       "time in Retry-After or ask for fewer max_tokens.",
                       headers={"Retry-After": str(retry)}, limit="tokens")


def _nothing() -> None:
    """Release nothing."""
