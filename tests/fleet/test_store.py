"""The shared Redis client: enough connections for a gevent worker's requests at once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import redis

from flask_inference_gateway.fleet.store import MAX_CONNECTIONS, close_idle_connections, connect
from tests.integration.redis_server import RedisServer


def test_many_calls_at_once_share_the_pool_without_refusal(module_redis: RedisServer) -> None:
    client = connect(module_redis.url + f"?client_name=t{uuid.uuid4().hex[:6]}", 2.0)
    # 150 calls each holding a connection for a second: redis-py's default pool (100)
    # refuses a third of them with "Too many connections".
    with ThreadPoolExecutor(150) as pool:
        answers = list(pool.map(lambda i: client.blpop([f"nothing-{i}"], timeout=1),
                                range(150)))
    assert answers == [None] * 150
    assert client.connection_pool.max_connections == MAX_CONNECTIONS


def test_a_process_keeps_one_client_per_url(module_redis: RedisServer) -> None:
    assert connect(module_redis.url, 0.5) is connect(module_redis.url, 0.5)
    assert isinstance(connect(module_redis.url, 0.5).connection_pool,
                      redis.BlockingConnectionPool)


def test_idle_connections_are_closed_and_reopened_on_demand(module_redis: RedisServer) -> None:
    client = connect(module_redis.url + "?client_name=idle", 1.0)
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda i: client.blpop([f"idle-{i}"], timeout=0.2), range(5)))
    pooled = client.connection_pool._connections  # type: ignore[attr-defined]
    assert sum(c._sock is not None for c in pooled) == 5
    close_idle_connections()
    assert sum(c._sock is not None for c in pooled) == 0  # Redis holds no socket of ours
    assert client.ping() is True  # the next call reconnects
