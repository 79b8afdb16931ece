"""Admission: at most ``cap`` generations per backend, and a fair queue for the rest.

A request names the backends that may serve it, best first. It takes a slot
on the first with room; when all are full it waits in a queue that serves
callers (API keys, or client addresses) in turn rather than in arrival order:

    tag(request) = max(virtual time, the caller's last tag) + 1 / weight

and a freed slot goes to the waiting request with the lowest tag that the
backend may serve (a ``priority`` caller's tags come before every other's).
The virtual time is the tag last served, so a caller that has been quiet
starts level with the others, and a caller with 50 requests queued waits
behind its own: a light caller's request is served within a slot or two.
This is start-time fair queueing over requests; with unit costs it is the
order deficit round robin gives, a quantum of ``weight`` requests per turn.

``LocalAdmission`` keeps this in one process. ``SharedAdmission``
(shared.py) keeps the same rules in Redis, for every worker and replica.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from flask_inference_gateway.core.errors import BackendBusy, ClientLeft
from flask_inference_gateway.core.types import Caller

POLL_SECONDS = 0.25  # how often a queued request checks its client and its candidates
PRIORITY_OFFSET = 1e15  # priority tags sort before every other tag
FORGET_AFTER = 10_000  # callers remembered; beyond, those level with the clock are forgotten


@dataclass
class Want:
    """A request's claim: the backends that may serve it (best first), and how long it waits."""

    backends: list[str]
    caller: Caller
    until: float  # time.monotonic() after which it gets 503
    gone: Callable[[], bool]  # has its client left?
    refresh: Callable[[], list[str]]  # the candidates now (a circuit may have closed)
    model: str = ""


@dataclass(frozen=True)
class Grant:
    """A slot taken on ``backend``; ``lease`` names it in Redis (empty: in this process)."""

    backend: str
    lease: str = ""


class Admission(Protocol):
    """Where slots are counted: this process (LocalAdmission) or Redis (SharedAdmission)."""

    def admit(self, want: Want) -> Grant: ...

    def release(self, grant: Grant, reusable: bool = True) -> None: ...


def busy(why: str) -> BackendBusy:
    """Return the 503 for a request that found no room."""
    return BackendBusy(f"The model backends are busy: {why}; retry after the time in "
                       "Retry-After.", headers={"Retry-After": "1"})


def queue_full(want: Want, size: int) -> BackendBusy:
    """Return the 503 for a request that found the queue full."""
    return busy(f"every backend serving '{want.model}' is at capacity and {size} requests "
                "are already queued")


def waited_too_long(want: Want, seconds: float) -> BackendBusy:
    """Return the 503 for a request that waited its whole queue timeout."""
    return busy(f"no backend serving '{want.model}' had room within {seconds:g} s")


class FairClock:
    """Tags for waiting requests: start-time fair queueing by caller and weight."""

    def __init__(self) -> None:
        self.now = 0.0
        self._last: dict[str, float] = {}

    def tag(self, caller: Caller) -> float:
        """Return the tag of a new waiting request of ``caller``."""
        finish = max(self.now, self._last.get(caller.name, 0.0)) + 1.0 / caller.weight
        self._last[caller.name] = finish
        if len(self._last) > FORGET_AFTER:
            self._last = {k: v for k, v in self._last.items() if v > self.now}
        return finish - PRIORITY_OFFSET if caller.priority else finish

    def served(self, tag: float) -> None:
        """Advance the virtual time to a served request's tag."""
        if tag > 0:
            self.now = max(self.now, tag)


@dataclass(eq=False)
class Ticket:
    """One waiting request, in the queue's order."""

    tag: float
    seq: int
    backends: set[str]
    event: threading.Event = field(default_factory=threading.Event)
    granted: str | None = None

    def order(self) -> tuple[float, int]:
        """Return the queue's sort key: tag, then arrival."""
        return (self.tag, self.seq)


class LocalAdmission:
    """Slots and the fair queue in this process (one gunicorn worker)."""

    def __init__(self, cap: int, *, queue_size: int = 100, queue_timeout: float = 30.0) -> None:
        self.cap = cap
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.used: dict[str, int] = {}
        self._queue: list[Ticket] = []
        self._clock = FairClock()
        self._seq = itertools.count()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Return how many requests wait for a slot."""
        return len(self._queue)

    def admit(self, want: Want) -> Grant:
        """Take a slot on the first of ``want.backends`` with room, or wait in turn for one."""
        with self._lock:
            backend = self._room(want.backends)
            if backend is not None:
                return Grant(backend)
            if len(self._queue) >= self.queue_size:
                raise queue_full(want, self.queue_size)
            ticket = Ticket(self._clock.tag(want.caller), next(self._seq), set(want.backends))
            bisect.insort(self._queue, ticket, key=Ticket.order)
        return Grant(self._wait(ticket, want))

    def _room(self, backends: list[str]) -> str | None:
        """Take a slot on the first backend with room; the caller holds the lock."""
        for backend in backends:
            used = self.used.get(backend, 0)
            if not self.cap or used < self.cap:
                self.used[backend] = used + 1
                return backend
        return None

    def _wait(self, ticket: Ticket, want: Want) -> str:
        """Wait for a slot handed over by ``release``; leave on timeout or when the client left."""
        until = min(want.until, time.monotonic() + self.queue_timeout)
        left = False
        while not ticket.event.wait(max(0.0, min(POLL_SECONDS, until - time.monotonic()))):
            if self._take_late(ticket, want):
                break
            left = want.gone()
            if left or time.monotonic() >= until:
                break
        with self._lock:
            if ticket.granted is not None:
                return ticket.granted
            self._queue.remove(ticket)
        if left:
            raise ClientLeft()
        raise waited_too_long(want, self.queue_timeout)

    def _take_late(self, ticket: Ticket, want: Want) -> bool:
        """Take room no release handed over (a circuit closed again); return whether taken."""
        with self._lock:
            if ticket.granted is None:
                backend = self._room(want.refresh())
                if backend is None:
                    return False
                self._queue.remove(ticket)
                ticket.granted = backend
            return True

    def release(self, grant: Grant, reusable: bool = True) -> None:
        """Free a slot: hand it to the first waiting request that ``grant.backend`` serves.

        ``reusable``: False when the backend should take no more now (its circuit opened).
        """
        backend = grant.backend
        with self._lock:
            if reusable:
                for ticket in self._queue:
                    if backend in ticket.backends:
                        self._queue.remove(ticket)
                        self._clock.served(ticket.tag)
                        ticket.granted = backend
                        ticket.event.set()
                        return
            self.used[backend] = self.used.get(backend, 1) - 1
