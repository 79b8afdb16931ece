"""DNS discovery: dns+http:// URLs expanded, re-resolved, followed by the pool."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

from flask_inference_gateway.core.types import Probe, Timeouts
from flask_inference_gateway.extension import build_state
from flask_inference_gateway.routing import discovery as discovery_module
from flask_inference_gateway.routing.discovery import (
    Catalog,
    Discovery,
    expand,
    follow,
    resolve_host,
)
from flask_inference_gateway.routing.pool import BackendPool
from flask_inference_gateway.settings import Settings


class FakeDNS:
    """A resolver whose answers the test sets: ``dns.records[name] = [...]`` or an error."""

    def __init__(self, **records: list[str]) -> None:
        self.records: dict[str, list[str] | OSError] = dict(records)
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        answer = self.records.get(host, socket.gaierror(socket.EAI_NONAME, "unknown name"))
        if isinstance(answer, OSError):
            raise answer
        return answer


class Clock:
    """A hand-driven time.monotonic()."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stub:
    kind = "ollama"
    timeouts = Timeouts()

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


# --- expand ------------------------------------------------------------------------------

def test_plain_urls_pass_through_unchanged() -> None:
    dns = FakeDNS()
    urls = ["http://gpu1:11434", "https://vllm.internal/v1"]
    assert expand(urls, dns) == urls
    assert dns.asked == []


def test_every_address_of_a_name_is_a_backend_sorted_once_ipv6_in_brackets() -> None:
    dns = FakeDNS(ollama=["10.0.0.12", "fd00::2", "10.0.0.9", "10.0.0.12", "fd00::2"])
    assert expand(["dns+http://ollama:11434"], dns) == [
        "http://10.0.0.9:11434", "http://10.0.0.12:11434", "http://[fd00::2]:11434"]
    assert dns.asked == [("ollama", 11434)]


def test_the_path_is_kept_and_the_scheme_gives_the_default_port() -> None:
    dns = FakeDNS(vllm=["10.0.0.5"])
    assert expand(["dns+https://vllm/v1"], dns) == ["https://10.0.0.5:443/v1"]
    assert expand(["dns+http://vllm"], dns) == ["http://10.0.0.5:80"]


def test_plain_and_resolved_urls_mix_each_backend_once() -> None:
    dns = FakeDNS(a=["10.0.0.1"], b=["10.0.0.1", "10.0.0.2"])
    assert expand(["http://gpu:11434", "dns+http://a:11434", "dns+http://b:11434"], dns) == [
        "http://gpu:11434", "http://10.0.0.1:11434", "http://10.0.0.2:11434"]


def test_a_name_that_does_not_resolve_raises() -> None:
    with pytest.raises(socket.gaierror):
        expand(["dns+http://nowhere:11434"], FakeDNS())


def test_the_system_resolver_answers_localhost() -> None:
    assert set(resolve_host("localhost", 80)) & {"127.0.0.1", "::1"}
    assert expand(["dns+http://localhost:9"])[0] in ("http://127.0.0.1:9", "http://[::1]:9")


# --- Discovery ---------------------------------------------------------------------------

def test_names_are_resolved_again_at_most_every_interval() -> None:
    dns, clock = FakeDNS(ollama=["10.0.0.1"]), Clock()
    discovery = Discovery(["dns+http://ollama:11434"], 10.0, resolve=dns, clock=clock)
    assert discovery.urls() == ["http://10.0.0.1:11434"]
    dns.records["ollama"] = ["10.0.0.1", "10.0.0.2"]
    clock.now += 9.9
    assert discovery.refresh() is False
    assert discovery.urls() == ["http://10.0.0.1:11434"]
    assert len(dns.asked) == 1
    clock.now += 0.1
    assert discovery.refresh() is True
    assert discovery.urls() == ["http://10.0.0.1:11434", "http://10.0.0.2:11434"]
    clock.now += 10
    assert discovery.refresh() is False  # resolved again, same answer
    assert len(dns.asked) == 3


def test_a_failing_name_keeps_its_last_answer_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    dns, clock = FakeDNS(ollama=["10.0.0.1"]), Clock()
    discovery = Discovery(["dns+http://ollama:11434", "http://fixed:11434"], 1.0,
                          resolve=dns, clock=clock)
    discovery.urls()
    dns.records["ollama"] = socket.gaierror(socket.EAI_AGAIN, "temporary failure")
    with caplog.at_level(logging.INFO, logger=discovery_module.__name__):
        for _ in range(3):
            clock.now += 1
            assert discovery.refresh() is False
            assert discovery.urls() == ["http://10.0.0.1:11434", "http://fixed:11434"]
        dns.records["ollama"] = ["10.0.0.3"]
        clock.now += 1
        assert discovery.refresh() is True
    assert discovery.urls() == ["http://10.0.0.3:11434", "http://fixed:11434"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dns+http://ollama:11434" in warnings[0].getMessage()
    assert any("resolves again" in r.getMessage() for r in caplog.records)


def test_a_name_that_never_resolved_names_no_backend_until_it_does() -> None:
    dns, clock = FakeDNS(), Clock()
    discovery = Discovery(["dns+http://ollama:11434"], 1.0, resolve=dns, clock=clock)
    assert discovery.urls() == []
    dns.records["ollama"] = ["10.0.0.1"]
    clock.now += 1
    assert discovery.refresh() is True
    assert discovery.urls() == ["http://10.0.0.1:11434"]


def test_plain_urls_are_not_dynamic() -> None:
    assert not Discovery(["http://a:1"], 1.0).dynamic
    assert Discovery(["http://a:1", "dns+http://b:1"], 1.0).dynamic


# --- Catalog and the pool ----------------------------------------------------------------

def catalog_of(dns: FakeDNS, clock: Clock, *urls: str) -> tuple[Catalog, list[str]]:
    made: list[str] = []

    def make(url: str) -> Any:
        made.append(url)
        return Stub(url)

    return Catalog([(Discovery(urls, 1.0, resolve=dns, clock=clock), make)]), made


def test_the_catalog_keeps_an_adapter_while_its_url_stays() -> None:
    dns, clock = FakeDNS(ollama=["10.0.0.1", "10.0.0.2"]), Clock()
    catalog, made = catalog_of(dns, clock, "dns+http://ollama:11434")
    first = {b.base_url: b for b in catalog.backends()}
    dns.records["ollama"] = ["10.0.0.2", "10.0.0.3"]
    clock.now += 1
    assert catalog.refresh() is True
    second = {b.base_url: b for b in catalog.backends()}
    assert list(second) == ["http://10.0.0.2:11434", "http://10.0.0.3:11434"]
    assert second["http://10.0.0.2:11434"] is first["http://10.0.0.2:11434"]
    assert made == ["http://10.0.0.1:11434", "http://10.0.0.2:11434", "http://10.0.0.3:11434"]


def test_the_pool_follows_dns_and_a_surviving_node_keeps_its_state() -> None:
    dns, clock = FakeDNS(ollama=["10.0.0.1", "10.0.0.2"]), Clock()
    catalog, _ = catalog_of(dns, clock, "dns+http://ollama:11434")
    pool = BackendPool(catalog.backends())
    staying, leaving = pool.nodes[1], pool.nodes[0]
    staying.learn(Probe([{"id": "m"}], {"m"}))
    staying.failures = 2
    held = [pool.acquire("m", [leaving], time.monotonic() + 5, lambda: False),
            pool.acquire("m", [staying], time.monotonic() + 5, lambda: False)]
    assert (staying.in_flight, leaving.in_flight) == (1, 1)

    dns.records["ollama"] = ["10.0.0.2", "10.0.0.3"]
    clock.now += 1
    follow(catalog, pool)()
    assert [n.url for n in pool.nodes] == ["http://10.0.0.2:11434", "http://10.0.0.3:11434"]
    assert pool.nodes[0] is staying
    assert (staying.in_flight, staying.failures, staying.models) == (1, 2, frozenset({"m"}))
    assert pool.nodes[1].in_flight == 0 and pool.nodes[1].models is None
    assert leaving not in pool.candidates("m")

    for slot in held:  # the request on the dropped node still releases cleanly
        pool.release(slot)
    assert (staying.in_flight, leaving.in_flight) == (0, 0)


def test_the_pool_is_left_alone_while_dns_says_the_same() -> None:
    dns, clock = FakeDNS(ollama=["10.0.0.1"]), Clock()
    catalog, _ = catalog_of(dns, clock, "dns+http://ollama:11434")
    pool = BackendPool(catalog.backends())
    nodes = pool.nodes
    clock.now += 1
    follow(catalog, pool)()
    assert pool.nodes is nodes


# --- wiring in the extension -------------------------------------------------------------

def gateway_settings(ollama_url: str, **more: str) -> Settings:
    return Settings.from_mapping({"GATEWAY_OLLAMA_URL": ollama_url,
                                  "GATEWAY_AUTH_DISABLED": "1",
                                  "GATEWAY_RATE_LIMIT_DISABLED": "1", **more})


def test_the_gateway_expands_dns_urls_and_polls_them(monkeypatch: pytest.MonkeyPatch) -> None:
    dns = FakeDNS(ollama=["10.0.0.1", "10.0.0.2"])
    monkeypatch.setattr(discovery_module, "resolve_host", dns)
    state = build_state(gateway_settings("dns+http://ollama:11434,http://fixed:11434",
                                         GATEWAY_DNS_SECONDS="0.001"))
    pool = state.service.router.pool
    assert [n.url for n in pool.nodes] == [
        "http://10.0.0.1:11434", "http://10.0.0.2:11434", "http://fixed:11434"]
    dns.records["ollama"] = ["10.0.0.2"]
    time.sleep(0.01)
    dns_poller = state.pollers[-1]
    assert dns_poller.interval == 0.001 and not dns_poller.exclusive
    dns_poller.poll()
    assert [n.url for n in pool.nodes] == ["http://10.0.0.2:11434", "http://fixed:11434"]


def test_a_gateway_without_dns_urls_has_no_dns_poller() -> None:
    plain = build_state(gateway_settings("http://fixed:11434"))
    dynamic = build_state(gateway_settings("dns+http://localhost:11434"))
    assert len(dynamic.pollers) == len(plain.pollers) + 1


def test_a_gateway_starts_before_its_dns_name_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery_module, "resolve_host", FakeDNS())
    state = build_state(gateway_settings("dns+http://ollama:11434"))
    assert state.service.router.pool.nodes == []


def test_a_request_reaches_the_address_the_name_resolves_to(
        make_client: Any, fake_ollama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery_module, "resolve_host", FakeDNS(ollama=["127.0.0.1"]))
    client = make_client(GATEWAY_OLLAMA_URL=f"dns+http://ollama:{fake_ollama.port}")
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert [b["url"] for b in ready.get_json()["backends"]] == [fake_ollama.url]
    answer = client.post("/v1/generate", json={"prompt": "Hi", "max_tokens": 4})
    assert answer.status_code == 200 and answer.get_json()["text"]
    assert len(fake_ollama.requests_seen) == 1
