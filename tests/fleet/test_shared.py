"""SharedAdmission against a real Redis: leases that lapse, wakes, outages."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from flask_inference_gateway.core.errors import BackendBusy, LimitsUnavailable
from flask_inference_gateway.core.types import Caller
from flask_inference_gateway.fleet.admission import Grant
from flask_inference_gateway.fleet.shared import SharedAdmission
from flask_inference_gateway.fleet.store import Keeper
from tests.fleet.conftest import shared
from tests.fleet.test_admission import want
from tests.integration.redis_server import RedisServer

ANY = Caller("k")


def admit_later(admission: SharedAdmission, wait: float = 10.0) -> dict[str, object]:
    """Admit in a thread; the dict gets the grant (or error) and how long it took."""
    result: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            result["grant"] = admission.admit(want(ANY, wait=wait))
        except Exception as exc:  # kept for the test to inspect
            result["grant"] = exc
        result["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def test_slots_of_a_dead_process_are_free_again_within_a_lease(
        module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = shared(module_redis, 4, prefix="dead-holder:", lease_seconds=0.6)
    # It never renews its leases: it "died".
    monkeypatch.setattr(dead, "_keeper", Keeper(dead.renew, 3600, "slots"))
    for _ in range(3):
        assert dead.admit(want(ANY)).lease
    alive = shared(module_redis, 4, prefix="dead-holder:", lease_seconds=0.6)
    assert alive.admit(want(ANY)).lease  # the fourth slot
    waiting = admit_later(alive)
    waiting["thread"].join(3)  # type: ignore[attr-defined]
    assert isinstance(waiting["grant"], Grant)
    assert waiting["took"] < 0.6 + 1.5  # the lease lapsed, and a poll found the slot
    for _ in range(2):  # the dead process's other two slots are free too
        assert alive.admit(want(ANY, wait=0.01)).lease


def test_a_renewed_lease_outlives_its_ttl(module_redis: RedisServer) -> None:
    holder = shared(module_redis, 1, prefix="renewed:", lease_seconds=0.6)
    holder.admit(want(ANY))
    time.sleep(1.5)  # two and a half lives of the lease, renewed every 0.2 s
    other = shared(module_redis, 1, prefix="renewed:", lease_seconds=0.6, queue_timeout=0.3)
    with pytest.raises(BackendBusy):
        other.admit(want(ANY))


def test_a_release_anywhere_wakes_a_waiter_at_once(module_redis: RedisServer) -> None:
    one = shared(module_redis, 1, prefix="wake:")
    other = shared(module_redis, 1, prefix="wake:")
    held = one.admit(want(ANY))
    waiting = admit_later(other)
    time.sleep(0.3)  # queued, and its process's listener subscribed
    released = time.monotonic()
    one.release(held)
    waiting["thread"].join(3)  # type: ignore[attr-defined]
    assert isinstance(waiting["grant"], Grant)
    # Woken by the published message, not by the once-a-second poll.
    assert time.monotonic() - released < 0.3


@pytest.fixture
def own_redis() -> RedisServer:
    server = RedisServer()
    try:
        server.start()
    except (OSError, RuntimeError):
        pytest.skip("redis-server is not installed (CI installs it)")
    yield server
    server.stop()


def test_fail_open_falls_back_to_this_process_share(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    admission = shared(own_redis, 2, fail_open=True)
    assert admission.admit(want(ANY)).lease
    own_redis.stop()
    with caplog.at_level(logging.WARNING):
        grants = [admission.admit(want(ANY, wait=0.2)) for _ in range(2)]
        with pytest.raises(BackendBusy):  # the fallback keeps its own cap of 2
            admission.admit(want(ANY, wait=0.2))
    assert [g.lease for g in grants] == ["", ""]
    assert sum("Redis unreachable" in r.message for r in caplog.records) == 1
    for grant in grants:
        admission.release(grant)
    assert admission.fallback.used == {"a": 0}


def test_fail_closed_answers_503(own_redis: RedisServer) -> None:
    admission = shared(own_redis, 2, fail_open=False)
    own_redis.stop()
    with pytest.raises(LimitsUnavailable) as raised:
        admission.admit(want(ANY))
    assert (raised.value.status, raised.value.headers["Retry-After"]) == (503, "1")
