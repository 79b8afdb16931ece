"""SharedHealth: what one worker learns of a backend's health, every worker knows.

Failures are counted per backend across the fleet (a Redis counter that
lives one cool-down). When the count reaches GATEWAY_BREAKER_FAILURES, the
worker that saw the last one opens the circuit and publishes it on the
health channel: every worker of every replica stops sending to that backend
at once, so a dead backend costs the fleet that many failed attempts, not
that many per worker. A success or an answered probe after failures closes
it everywhere the same way. What a probe finds (models, those in memory)
goes to every worker too when it changed, so a worker that has not probed a
backend yet routes on what another one learnt. Redis down: each worker keeps
its own breakers and probes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis

from flask_inference_gateway.core.types import Probe
from flask_inference_gateway.fleet.bus import bus_for
from flask_inference_gateway.fleet.store import instance_id

log = logging.getLogger(__name__)

CHANNEL = "gw:health"
PREFIX = "gw:health:"

Opened = Callable[[str, float, str], None]  # url, seconds open, error
Closed = Callable[[str], None]  # url
Learned = Callable[[str, Probe], None]  # url, what its probe found


class SharedHealth:
    """Count backend failures fleet-wide; tell every worker when a circuit opens or closes."""

    def __init__(self, client: redis.Redis, *, channel: str = CHANNEL,
                 prefix: str = PREFIX) -> None:
        self.client = client
        self.channel = channel
        self.prefix = prefix
        self.me = instance_id()
        self._opened: Opened | None = None
        self._closed: Closed | None = None
        self._learned: Learned | None = None
        self._warned = False

    def listen(self, opened: Opened, closed: Closed, learned: Learned) -> None:
        """Call ``opened``/``closed`` when another worker opens or closes a circuit, and
        ``learned`` when its probe found new models or residency."""
        self._opened, self._closed, self._learned = opened, closed, learned
        bus_for(self.client).on(self.channel, self._message)

    def probed(self, url: str, probe: Probe) -> None:
        """Tell every worker what a probe of ``url`` found."""
        self._publish({"url": url, "open": 0, "probe": {
            "models": probe.models, "loaded": sorted(probe.loaded), "version": probe.version}})

    def failed(self, url: str, cooldown: float) -> int:
        """Count a failure of ``url``; return the fleet's count in this cool-down (0: unknown)."""
        key = f"{self.prefix}fail:{url}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.pexpire(key, int(cooldown * 1000))
            return int(pipe.execute()[0])
        except redis.RedisError as exc:
            self._outage(exc)
            return 0

    def opened(self, url: str, seconds: float, error: str) -> None:
        """Tell every worker that ``url``'s circuit is open for ``seconds``."""
        self._publish({"url": url, "open": seconds, "error": error})

    def closed(self, url: str) -> None:
        """Forget ``url``'s failures and tell every worker its circuit is closed."""
        try:
            self.client.delete(f"{self.prefix}fail:{url}")
        except redis.RedisError as exc:
            self._outage(exc)
            return
        self._publish({"url": url, "open": 0})

    def _publish(self, news: dict[str, object]) -> None:
        try:
            self.client.publish(self.channel, json.dumps({"from": self.me, **news}))
            self._warned = False
        except redis.RedisError as exc:
            self._outage(exc)

    def _outage(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("backend health: Redis unreachable, each worker keeps its own "
                        "breakers: %s", exc)

    def _message(self, data: str) -> None:
        news = json.loads(data)
        if news.get("from") == self.me or self._opened is None or self._closed is None:
            return
        found = news.get("probe")
        if found is not None and self._learned is not None:
            self._learned(news["url"], Probe(found["models"], set(found["loaded"]),
                                             found.get("version", "")))
        elif news["open"]:
            self._opened(news["url"], float(news["open"]), str(news.get("error", "")))
        else:
            self._closed(news["url"])
