"""SharedAdmission: admission's slots and fair queue in Redis, for every worker and replica.

A slot is a lease with a short life (GATEWAY_LEASE_SECONDS) that its
process renews every third of it, so a worker killed by SIGKILL frees its
slots within one lease. A waiting request is woken when a slot frees
anywhere: the releasing script publishes its ticket on the owner's channel,
and the process's bus (bus.py) wakes it. It also polls about once a second
(which keeps its ticket alive), so a lost message costs a second, no more.

When Redis cannot be reached, the outage policy decides: fail open falls
back to this process's own share (``fallback``), fail closed answers 503.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import redis

from flask_inference_gateway.core.errors import ClientLeft
from flask_inference_gateway.fleet import scripts
from flask_inference_gateway.fleet.admission import (
    POLL_SECONDS,
    Grant,
    LocalAdmission,
    Want,
    queue_full,
    waited_too_long,
)
from flask_inference_gateway.fleet.bus import bus_for
from flask_inference_gateway.fleet.store import Keeper, Outage, instance_id

log = logging.getLogger(__name__)

PREFIX = "gw:adm:"


class SharedAdmission:
    """Slots per backend counted in Redis; queued requests served fairly across the fleet."""

    def __init__(self, client: redis.Redis, cap: int, *, fallback: LocalAdmission,
                 lease_seconds: float = 5.0, queue_size: int = 100,
                 queue_timeout: float = 30.0, fail_open: bool = True,
                 prefix: str = PREFIX) -> None:
        self.client = client
        self.cap = cap
        self.fallback = fallback
        self.ttl_ms = int(lease_seconds * 1000)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.prefix = prefix
        self.outage = Outage("admission", fail_open=fail_open)
        self.me = instance_id()
        self.channel = f"{prefix}wake:{self.me}"
        self._ids = itertools.count()
        self._scripts = {name: client.register_script(getattr(scripts, name))
                         for name in ("ADMIT", "POLL", "LEAVE", "RELEASE", "RENEW")}
        self._waiting: dict[str, threading.Event] = {}
        self._queued: set[str] = set()
        self._held: dict[str, str] = {}  # lease id -> backend, renewed by the keeper
        self._lock = threading.Lock()
        self._keeper = Keeper(self.renew, lease_seconds / 3, "backend slots")
        self._listening = False

    def _run(self, name: str, *args: Any) -> Any:
        """Run one script with the prefix as its first argument."""
        return self._scripts[name](args=[self.prefix, *args])

    def admit(self, want: Want) -> Grant:
        """Take a slot on the first backend with room anywhere in the fleet, or wait in turn."""
        lease = f"{self.me}:{next(self._ids)}"
        args = self._admit_args(lease, want)
        if not self._listening:
            self._listening = True
            bus_for(self.client).on(self.channel, self.wake)
        event = threading.Event()
        self._waiting[lease] = event  # before the script: a wake may come at once
        try:
            answer = self.outage.call(self._run, "ADMIT", *args, default=None)
            if answer is None:
                return self.fallback.admit(want)
            state, value = (part.decode() for part in answer)
            if state == "granted":
                return self._hold(lease, value)
            if state == "full":
                raise queue_full(want, self.queue_size)
            self._queued.add(lease)
            return self._wait(lease, event, want)
        finally:
            self._waiting.pop(lease, None)
            self._queued.discard(lease)

    def _admit_args(self, lease: str, want: Want) -> list[Any]:
        """Return the ADMIT script's arguments for ``want``."""
        caller = want.caller
        return [lease, caller.name, caller.weight, int(caller.priority), self.cap, self.ttl_ms,
                int(len(self._queued) < self.queue_size), self.channel, *want.backends]

    def _hold(self, lease: str, backend: str) -> Grant:
        """Note a lease this process must renew, and return it as a grant."""
        with self._lock:
            self._held[lease] = backend
        self._keeper.ensure_running()
        return Grant(backend, lease)

    def _wait(self, lease: str, event: threading.Event, want: Want) -> Grant:
        """Wait for a wake or a poll to find the ticket granted; leave on timeout or exit."""
        until = min(want.until, time.monotonic() + self.queue_timeout)
        # Each poll renews the ticket: poll well within its life.
        every = min(1.0, self.ttl_ms / 3000)
        next_poll = time.monotonic() + every
        while True:
            woken = event.wait(max(0.0, min(POLL_SECONDS, until - time.monotonic())))
            if woken or time.monotonic() >= next_poll:
                event.clear()
                next_poll = time.monotonic() + every
                granted = self._poll(lease, want)
                if granted is not None:
                    return granted
            if want.gone() or time.monotonic() >= until:
                return self._leave(lease, want)

    def _poll(self, lease: str, want: Want) -> Grant | None:
        """Ask whether the ticket was granted (and offer it the backends that serve it now)."""
        answer = self.outage.call(self._run, "POLL", lease, self.cap, self.ttl_ms,
                                  *want.refresh(), default=None)
        if answer is None:
            return None  # Redis is down: keep waiting, the leave below decides
        state, value = (part.decode() for part in answer)
        if state == "granted":
            return self._hold(lease, value)
        if state == "lost":  # its ticket lapsed (this process stalled): queue it again
            again = self.outage.call(self._run, "ADMIT", *self._admit_args(lease, want),
                                     default=None)
            if again and again[0] == b"granted":
                return self._hold(lease, again[1].decode())
        return None

    def _leave(self, lease: str, want: Want) -> Grant:
        """Take the ticket out of the queue; a grant that raced in is kept if the client is here."""
        granted = self.outage.call(self._run, "LEAVE", lease, default=None)
        gone = want.gone()
        if granted:
            grant = self._hold(lease, granted.decode())
            if not gone:
                return grant
            self.release(grant)
        if gone:
            raise ClientLeft()
        raise waited_too_long(want, self.queue_timeout)

    def release(self, grant: Grant, reusable: bool = True) -> None:
        """Free a slot, handing it to the fleet's next waiting request."""
        if not grant.lease:
            self.fallback.release(grant, reusable)
            return
        with self._lock:
            self._held.pop(grant.lease, None)
        # Fail open either way: a slot Redis did not hear of expires with its lease.
        try:
            self._run("RELEASE", grant.lease, grant.backend, self.cap, self.ttl_ms,
                      int(reusable))
        except redis.RedisError as exc:
            log.warning("could not free a backend slot in Redis (it expires in %g s): %s",
                        self.ttl_ms / 1000, exc)

    def renew(self) -> None:
        """Extend the life of every lease this process holds."""
        with self._lock:
            pairs = [part for lease, backend in self._held.items() for part in (backend, lease)]
        if pairs:
            self._run("RENEW", self.ttl_ms, *pairs)

    def wake(self, lease: str) -> None:
        """Wake the request waiting on ``lease`` (a message on this process's channel)."""
        event = self._waiting.get(lease)
        if event is not None:
            event.set()

    @property
    def waiting(self) -> int:
        """Return how many of this process's requests wait in the fleet's queue."""
        return len(self._queued)

    @property
    def held(self) -> int:
        """Return how many slots this process holds in Redis."""
        return len(self._held)
