"""Counted slots without a queue (a key's concurrent streams): in this process, or leased in Redis.

``take(name, cap)`` returns a token, or None when ``cap`` slots of ``name``
are taken; ``give(name, token)`` frees it. In Redis a slot is a lease
(GATEWAY_LEASE_SECONDS) its process renews, so a worker killed mid-stream
frees its streams' slots within one lease.
"""

from __future__ import annotations

import itertools
import threading
from typing import Protocol

import redis

from flask_inference_gateway.fleet.store import Keeper, instance_id

# KEYS: the set of leases; ARGV: token, cap, ttl (ms)
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""

# ARGV: ttl (ms), then name, token pairs
RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], 'XX', expiry, ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], 2 * tonumber(ARGV[1]))
end
return 1
"""


class Semaphores(Protocol):
    """Named, counted slots: MemorySemaphores or RedisSemaphores."""

    def take(self, name: str, cap: int) -> str | None: ...

    def give(self, name: str, token: str) -> None: ...


class MemorySemaphores:
    """Slots counted in this process (one gunicorn worker)."""

    def __init__(self) -> None:
        self.taken: dict[str, int] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def take(self, name: str, cap: int) -> str | None:
        """Take a slot of ``name`` if fewer than ``cap`` are taken."""
        with self._lock:
            if self.taken.get(name, 0) >= cap:
                return None
            self.taken[name] = self.taken.get(name, 0) + 1
            return str(next(self._ids))

    def give(self, name: str, token: str) -> None:
        """Free a slot of ``name``."""
        with self._lock:
            left = self.taken.get(name, 1) - 1
            if left > 0:
                self.taken[name] = left
            else:
                self.taken.pop(name, None)


class RedisSemaphores:
    """Slots leased in Redis, shared by every worker and replica."""

    def __init__(self, client: redis.Redis, lease_seconds: float = 5.0) -> None:
        self.client = client
        self.ttl_ms = int(lease_seconds * 1000)
        self.me = instance_id()
        self._ids = itertools.count()
        self._take = client.register_script(TAKE)
        self._renew = client.register_script(RENEW)
        self._held: dict[str, str] = {}  # token -> name
        self._lock = threading.Lock()
        self._keeper = Keeper(self.renew, lease_seconds / 3, "stream slots")

    def take(self, name: str, cap: int) -> str | None:
        """Lease a slot of ``name`` if fewer than ``cap`` are leased anywhere."""
        token = f"{self.me}:{next(self._ids)}"
        if not self._take(keys=[name], args=[token, cap, self.ttl_ms]):
            return None
        with self._lock:
            self._held[token] = name
        self._keeper.ensure_running()
        return token

    def give(self, name: str, token: str) -> None:
        """Free a leased slot."""
        with self._lock:
            self._held.pop(token, None)
        self.client.zrem(name, token)

    def renew(self) -> None:
        """Extend the life of every slot this process holds."""
        with self._lock:
            pairs = [part for token, name in self._held.items() for part in (name, token)]
        if pairs:
            self._renew(args=[self.ttl_ms, *pairs])
