"""Several backends as one: which may serve a model, health, and admission control.

Routing rule, for a request naming model M:

1. Candidates are the backends whose circuit is closed (or whose cool-down
   has passed) and that list M (Ollama's /api/tags, OpenAI's /v1/models).
   When none lists it, those whose list is not known yet (not probed, and
   no 404 for M since the last probe); when none of those either, every
   healthy backend is a candidate and the backend's own 404 decides.
2. Backends that would have to swap another model out of memory to load M
   (Ollama's /api/ps lists other models, not M) come last, so models are not
   swapped in and out of VRAM; a backend with M in memory (every model of an
   OpenAI-compatible server) or with nothing in memory comes first.
3. A backend that answered 503 (busy) comes after the others for its
   Retry-After.
4. Within each group, by ``routing`` (GATEWAY_ROUTING):
   ``least-busy``: fewest requests in flight from this worker, ties rotate;
   ``prefix``: the backend the request's prefix hashes to, unless it is over
   the load bound (``affinity.py``); ``round-robin``: in turn.

Admission (``fleet/admission.py``): a backend takes at most its cap of
requests at once (0: no cap), counted in this process or, with Redis, across
the fleet. Requests over the cap wait in a fair queue, bounded in length and
in time, and take a freed slot of a backend that serves their model.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask_inference_gateway.core.errors import GatewayError, NoBackendAvailable
from flask_inference_gateway.core.types import (
    ANONYMOUS,
    Caller,
    Probe,
)
from flask_inference_gateway.fleet.admission import Admission, Grant, LocalAdmission, Want
from flask_inference_gateway.fleet.health import SharedHealth
from flask_inference_gateway.routing.affinity import by_affinity
from flask_inference_gateway.routing.node import Backend, Node, aliases

__all__ = ["Backend", "BackendPool", "Node", "Slot", "aliases"]

log = logging.getLogger(__name__)

ROUTINGS = ("least-busy", "prefix", "round-robin")


@dataclass(eq=False)
class Slot:
    """A slot taken on ``node``: the request holds it until ``BackendPool.release``."""

    node: Node
    grant: Grant


class BackendPool:
    """Choose a backend per request; track health; admit requests within capacity."""

    def __init__(self, backends: Iterable[Backend], *, max_concurrency: int = 0,
                 queue_size: int = 100, queue_timeout: float = 30.0,
                 breaker_failures: int = 3, breaker_cooldown: float = 10.0,
                 routing: str = "least-busy", prefix_balance: float = 0.25,
                 admission: Admission | None = None,
                 health: SharedHealth | None = None) -> None:
        """``admission`` counts the slots (default: this process, ``max_concurrency`` each);
        ``health`` shares circuit breakers with the fleet (default: this worker's own)."""
        self.nodes = [Node(backend) for backend in backends]
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
        self.routing = routing
        self.prefix_balance = prefix_balance
        self.admission = admission or LocalAdmission(
            max_concurrency, queue_size=queue_size, queue_timeout=queue_timeout)
        self.breaker_failures = breaker_failures
        self.breaker_cooldown = breaker_cooldown
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self.health = health
        if health is not None:
            health.listen(self._opened_elsewhere, self._closed_elsewhere, self._probed_elsewhere)

    def candidates(self, model: str, exclude: Iterable[Node] = (),
                   key: bytes | None = None) -> list[Node]:
        """Return the backends that may serve ``model`` now, best first (``key``: the
        request's prefix key, for prefix routing)."""
        now = time.monotonic()
        usable = [n for n in self.nodes if now >= n.open_until and n not in exclude]
        # Those listing M; else those whose list is not known (not those known to lack
        # it); else everyone, and the backends' own 404 decides.
        serving = ([n for n in usable if n.serves(model)]
                   or [n for n in usable if n.serves(model) is None] or usable)
        if len(serving) < 2:
            return serving
        ready = [n for n in serving if not n.must_swap(model)]
        swapping = [n for n in serving if n.must_swap(model)]
        ordered = self._order(ready, key) + self._order(swapping, key)
        # A backend that just answered 503 is tried after the others, for its Retry-After.
        return ([n for n in ordered if now >= n.busy_until]
                + [n for n in ordered if now < n.busy_until])

    def _order(self, nodes: list[Node], key: bytes | None) -> list[Node]:
        """Return ``nodes`` in the order the routing setting gives them."""
        if len(nodes) < 2:
            return nodes
        if self.routing == "prefix" and key is not None:
            return by_affinity(nodes, key, self.prefix_balance)  # type: ignore[return-value]
        turn, count = next(self._turn), len(nodes)
        order = {n: (i - turn) % count for i, n in enumerate(nodes)}
        if self.routing == "round-robin":
            return sorted(nodes, key=order.__getitem__)
        return sorted(nodes, key=lambda n: (n.in_flight, order[n]))

    def nodes_of(self, kind: str) -> list[Node]:
        """Return the backends of one kind ('ollama', 'openai') whose circuit is closed."""
        now = time.monotonic()
        return [n for n in self.nodes if n.backend.kind == kind and now >= n.open_until]

    def acquire(self, model: str, exclude: Iterable[Node], deadline: float,
                gone: Callable[[], bool], key: bytes | None = None,
                caller: Caller = ANONYMOUS) -> Slot | None:
        """Take a slot on the best backend for ``model``, queueing fairly when all are full.

        Returns None when no backend is left to try.
        """
        exclude = list(exclude)
        nodes = self.candidates(model, exclude, key)
        if not nodes:
            return None
        grant = self.admission.admit(Want(
            [n.url for n in nodes], caller, deadline, gone,
            lambda: [n.url for n in self.candidates(model, exclude)], model))
        node = self._node(grant.backend, nodes)
        with self._lock:
            node.in_flight += 1
        return Slot(node, grant)

    def _node(self, url: str, nearby: list[Node]) -> Node:
        """Return the node of ``url``: one of ``nearby`` or, rarely, any of the pool's."""
        for node in nearby:
            if node.url == url:
                return node
        return next(node for node in self.nodes if node.url == url)

    def does_not_serve(self, node: Node, model: str) -> None:
        """Note that ``node`` answered 404 for ``model``: others serve it first, until the
        node's next probe."""
        node.missing = node.missing | aliases(model)

    def busy_for(self, node: Node, seconds: float) -> None:
        """Try ``node`` after the others for ``seconds``: it said it is busy."""
        node.busy_until = time.monotonic() + seconds

    def release(self, slot: Slot) -> None:
        """Free a slot: the next queued request that its backend serves takes it."""
        node = slot.node
        with self._lock:
            node.in_flight -= 1
        self.admission.release(slot.grant, reusable=time.monotonic() >= node.open_until)

    def unavailable(self, model: str) -> GatewayError:
        """Return the error for a request that found every backend's circuit open."""
        now = time.monotonic()
        soonest = min((n.open_until for n in self.nodes), default=now)
        wait = max(1, round(soonest - now))
        return NoBackendAvailable(f"No backend can serve '{model}' now: every one failed "
                                  f"recently and is cooling down for up to {wait} s.",
                                  headers={"Retry-After": str(wait)})

    def succeeded(self, node: Node, model: str) -> None:
        """Close ``node``'s circuit; it now holds ``model`` in memory."""
        self._close(node, "is healthy again")
        if model not in node.loaded:
            node.loaded = node.loaded | aliases(model)

    def failed(self, node: Node, error_type: str, message: str) -> None:
        """Count a failure of ``node``; open its circuit after too many in a row (in this
        worker, or across the fleet when health is shared)."""
        node.failures += 1
        node.last_error = message
        fleet = self.health.failed(node.url, self.breaker_cooldown) if self.health else 0
        if max(node.failures, fleet) >= self.breaker_failures:
            if time.monotonic() >= node.open_until:
                log.warning("backend %s failed %d times in a row (%s); no traffic for %g s",
                            node.url, max(node.failures, fleet), error_type,
                            self.breaker_cooldown)
                if self.health:
                    self.health.opened(node.url, self.breaker_cooldown, message)
            node.open_until = time.monotonic() + self.breaker_cooldown

    def probed(self, node: Node, probe: Probe) -> None:
        """Record a successful health probe: fresh model lists, circuit closed."""
        before = (node.models, node.loaded)
        node.learn(probe)
        if self.health and (node.models, node.loaded) != before:
            self.health.probed(node.url, probe)
        self._close(node, "answers its probe again")

    def _probed_elsewhere(self, url: str, probe: Probe) -> None:
        """Take what another worker's probe of ``url`` found."""
        for node in self.nodes:
            if node.url == url:
                node.learn(probe)

    def _close(self, node: Node, why: str) -> None:
        """Close ``node``'s circuit after a success; tell the fleet if it had failures."""
        if node.failures or node.open_until:
            log.info("backend %s %s", node.url, why)
            if self.health:
                self.health.closed(node.url)
        node.failures, node.open_until, node.last_error = 0, 0.0, None

    def _opened_elsewhere(self, url: str, seconds: float, error: str) -> None:
        """Open the circuit another worker opened."""
        for node in self.nodes:
            if node.url == url:
                node.failures = max(node.failures, self.breaker_failures)
                node.open_until = time.monotonic() + seconds
                node.last_error = error

    def _closed_elsewhere(self, url: str) -> None:
        """Close the circuit another worker closed."""
        for node in self.nodes:
            if node.url == url:
                node.failures, node.open_until, node.last_error = 0, 0.0, None

    def set_backends(self, backends: list[Backend]) -> None:
        """Serve ``backends`` from now on (DNS discovery found them): a backend whose URL
        stays keeps its node, health and requests in flight included."""
        with self._lock:
            kept = {node.url: node for node in self.nodes}
            # A new list, never a change in place: whoever iterates the old one
            # (candidates, probes) finishes on it, and a request in flight on a
            # dropped node still holds that node and releases it.
            self.nodes = [kept.get(backend.base_url) or Node(backend) for backend in backends]
