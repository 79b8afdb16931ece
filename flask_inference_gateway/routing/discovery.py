"""DNS discovery: a ``dns+http://name:port`` backend URL is every address the name resolves to.

A Kubernetes headless Service answers its name with the address of each ready
pod behind it (A and AAAA records), so ``dns+http://ollama-headless:11434``
names every Ollama pod: each address becomes a backend ``http://ADDR:11434``
(IPv6 in brackets), with the URL's path kept (``dns+http://vllm:8000/v1``).
Plain URLs pass through unchanged. ``Discovery`` resolves again at most every
``GATEWAY_DNS_SECONDS`` and keeps a name's last good answer while it does not
resolve, so a DNS outage never empties the pool (the circuit breakers shun
addresses that went away meanwhile). ``Catalog`` keeps one adapter per URL, the
same object for as long as its URL stays, so its connection pool survives.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from flask_inference_gateway.routing.pool import Backend, BackendPool

log = logging.getLogger(__name__)

DNS_PREFIX = "dns+"
DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], Iterable[str]]  # (host, port) -> addresses


def resolve_host(host: str, port: int) -> list[str]:
    """Return every address ``host`` resolves to (A and AAAA), as the system resolver says."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def is_dynamic(url: str) -> bool:
    """Return whether ``url`` names its backends through DNS (``dns+http://``)."""
    return url.startswith(DNS_PREFIX)


def _address_order(address: str) -> tuple[int, int]:
    """Return the sort key of an address: IPv4 before IPv6, then numerically."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def expand_one(url: str, resolve: Resolver | None = None) -> list[str]:
    """Return the backends one URL names: itself, or one per address of a dns+ name.

    Raises OSError (socket.gaierror) when the name does not resolve.
    """
    if not is_dynamic(url):
        return [url]
    parts = urlsplit(url.removeprefix(DNS_PREFIX))
    if not parts.hostname:
        raise ValueError(f"no host name in {url!r}")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    found = (resolve or resolve_host)(parts.hostname, port)
    addresses = sorted(set(found), key=_address_order)
    return [urlunsplit((parts.scheme, f"{_host(address)}:{port}", parts.path, "", ""))
            for address in addresses]


def _host(address: str) -> str:
    """Return ``address`` as a URL's host: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def expand(urls: Iterable[str], resolve: Resolver | None = None) -> list[str]:
    """Return the backends ``urls`` name, each once, in order (dns+ ones expanded)."""
    found: dict[str, None] = {}
    for url in urls:
        found.update(dict.fromkeys(expand_one(url, resolve)))
    return list(found)


class Discovery:
    """The backends a list of URLs names now; resolved again at most every ``interval``."""

    def __init__(self, urls: Sequence[str], interval: float, *,
                 resolve: Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = tuple(urls)
        self.interval = interval
        self.resolve = resolve  # None: the system resolver (resolve_host)
        self.clock = clock
        self._answers: dict[str, list[str]] = {}  # a dns+ URL's last good answer
        self._failing: set[str] = set()  # dns+ URLs whose last resolution failed
        self._resolved_at: float | None = None
        self._urls: list[str] = []

    @property
    def dynamic(self) -> bool:
        """Return whether any URL is resolved through DNS (and may change)."""
        return any(is_dynamic(url) for url in self.sources)

    def urls(self) -> list[str]:
        """Return the backends' URLs, resolving the names the first time."""
        if self._resolved_at is None:
            self.refresh()
        return list(self._urls)

    def refresh(self) -> bool:
        """Resolve the names again when ``interval`` has passed; return whether the list
        of backends changed."""
        now = self.clock()
        if self._resolved_at is not None and now - self._resolved_at < self.interval:
            return False
        self._resolved_at = now
        urls: dict[str, None] = {}
        for source in self.sources:
            urls.update(dict.fromkeys(self._answer(source)))
        changed = list(urls) != self._urls
        self._urls = list(urls)
        return changed

    def _answer(self, source: str) -> list[str]:
        """Return what ``source`` names now, or its last good answer when it fails."""
        try:
            answer = expand_one(source, self.resolve)
        except OSError as exc:
            if source not in self._failing:  # once per outage, not every interval
                self._failing.add(source)
                log.warning("backend %s does not resolve (%s); keeping its last %d "
                            "address(es)", source, exc, len(self._answers.get(source, ())))
            return self._answers.get(source, [])
        if source in self._failing:
            self._failing.discard(source)
            log.info("backend %s resolves again: %d address(es)", source, len(answer))
        self._answers[source] = answer
        return answer


class Catalog:
    """One adapter per backend URL of several discoveries, kept while its URL stays."""

    def __init__(self, sources: Sequence[tuple[Discovery, Callable[[str], Backend]]]) -> None:
        self.sources = tuple(sources)
        self._adapters: dict[str, Backend] = {}

    @property
    def dynamic(self) -> bool:
        """Return whether any backend URL is resolved through DNS."""
        return any(discovery.dynamic for discovery, _ in self.sources)

    def backends(self) -> list[Backend]:
        """Return an adapter per backend now named; a new one only for a new URL."""
        adapters: dict[str, Backend] = {}
        for discovery, make in self.sources:
            for url in discovery.urls():
                if url not in adapters:
                    adapters[url] = self._adapters.get(url) or make(url)
        self._adapters = adapters  # gone URLs' adapters go with their last request
        return list(adapters.values())

    def refresh(self) -> bool:
        """Resolve the names again where due; return whether any list changed."""
        changed = [discovery.refresh() for discovery, _ in self.sources]
        return any(changed)


def follow(catalog: Catalog, pool: BackendPool) -> Callable[[], None]:
    """Return one poll of DNS: ``pool`` serves what the backend URLs resolve to now."""

    def poll() -> None:
        if catalog.refresh():
            backends = catalog.backends()
            log.info("backends now: %s", ", ".join(b.base_url for b in backends) or "none")
            pool.set_backends(backends)

    return poll
