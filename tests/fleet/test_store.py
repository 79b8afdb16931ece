"""The shared Redis client: enough connections for a gevent worker's requests at once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import redis

from flask_inference_gateway.fleet.store import MAX_CONNECTIONS, connect
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
