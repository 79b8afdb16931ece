"""SharedHealth: two workers' pools over one real Redis open and close circuits together."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from flask_inference_gateway.core.types import Probe
from flask_inference_gateway.fleet.health import SharedHealth
from flask_inference_gateway.routing.pool import BackendPool, Node
from tests.integration.redis_server import RedisServer
from tests.routing.test_pool import make_pool


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def workers(module_redis: RedisServer) -> tuple[BackendPool, BackendPool]:
    """Return two pools (two workers) sharing health through the test's own channel."""
    name = uuid.uuid4().hex[:8]
    pools = tuple(make_pool("a", "b", breaker_failures=3, breaker_cooldown=30,
                            health=SharedHealth(module_redis.client(), channel=f"h-{name}",
                                                prefix=f"h-{name}:"))
                  for _ in range(2))
    time.sleep(0.3)  # both buses subscribed
    return pools  # type: ignore[return-value]


def is_open(node: Node) -> bool:
    return time.monotonic() < node.open_until


def test_failures_count_across_workers_and_the_circuit_opens_everywhere(workers) -> None:
    one, other = workers
    one.failed(one.nodes[0], "backend_unavailable", "refused")
    other.failed(other.nodes[0], "backend_unavailable", "refused")
    assert not is_open(one.nodes[0]) and not is_open(other.nodes[0])
    one.failed(one.nodes[0], "backend_unavailable", "refused")  # the fleet's third
    assert is_open(one.nodes[0])
    assert eventually(lambda: is_open(other.nodes[0]))
    assert other.nodes[0].last_error == "refused"
    assert [n.url for n in other.candidates("m")] == ["http://b:11434"]
    assert not is_open(other.nodes[1])  # only that backend


def test_a_success_closes_it_everywhere(workers) -> None:
    one, other = workers
    for _ in range(3):
        one.failed(one.nodes[0], "backend_unavailable", "refused")
    assert eventually(lambda: is_open(other.nodes[0]))
    one.succeeded(one.nodes[0], "m")
    assert eventually(lambda: not is_open(other.nodes[0]))
    assert other.nodes[0].failures == 0
    # The fleet's count starts again: one more failure opens nothing.
    other.failed(other.nodes[0], "backend_unavailable", "refused")
    assert not is_open(other.nodes[0])


def test_redis_down_keeps_each_workers_own_breaker() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    pool = make_pool("a", breaker_failures=2, breaker_cooldown=30,
                     health=SharedHealth(server.client()))
    pool.failed(pool.nodes[0], "backend_unavailable", "refused")
    assert not is_open(pool.nodes[0])
    pool.failed(pool.nodes[0], "backend_unavailable", "refused")
    assert is_open(pool.nodes[0])


def test_what_one_workers_probe_finds_every_worker_learns(workers) -> None:
    one, other = workers
    assert other.nodes[0].models is None  # it has not probed that backend yet
    one.probed(one.nodes[0], Probe([{"id": "qwen3:latest"}], {"qwen3:latest"}, "0.24.0"))
    assert eventually(lambda: other.nodes[0].models is not None)
    assert other.nodes[0].models == {"qwen3", "qwen3:latest"}
    assert other.nodes[0].loaded == {"qwen3", "qwen3:latest"}
    assert [n.url for n in other.candidates("qwen3")] == ["http://a:11434"]
