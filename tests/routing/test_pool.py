"""BackendPool with stub backends: candidate order, circuit breaker, admission (in this
process and in Redis: the same tests for both)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from flask_inference_gateway.core.errors import BackendBusy, ClientLeft, NoBackendAvailable
from flask_inference_gateway.core.types import Probe, Timeouts
from flask_inference_gateway.fleet import admission as admission_module
from flask_inference_gateway.fleet.admission import LocalAdmission
from flask_inference_gateway.fleet.shared import SharedAdmission
from flask_inference_gateway.routing import pool as pool_module
from flask_inference_gateway.routing.pool import BackendPool, Node, Slot


class Stub:
    kind = "ollama"
    timeouts = Timeouts()

    def __init__(self, name: str) -> None:
        self.base_url = f"http://{name}:11434"


def make_pool(*names: str, **options: Any) -> BackendPool:
    return BackendPool([Stub(name) for name in names], **options)  # type: ignore[misc]


def urls(nodes: list[Node]) -> list[str]:
    return [node.url.split("/")[2].split(":")[0] for node in nodes]


def knows(node: Node, models: list[str], loaded: tuple[str, ...] = ()) -> None:
    node.learn(Probe([{"id": m} for m in models], set(loaded)))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Drive the pool's time.monotonic() by hand: ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr(pool_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


# --- candidate order ---------------------------------------------------------------------

def test_only_backends_listing_the_model_are_candidates() -> None:
    pool = make_pool("a", "b", "c")
    knows(pool.nodes[0], ["qwen"])
    knows(pool.nodes[1], ["llama3.2:latest"])
    assert urls(pool.candidates("llama3.2")) == ["b"]
    assert urls(pool.candidates("qwen")) == ["a"]


@pytest.mark.parametrize("known", [False, True], ids=["unknown-lists", "nobody-lists-it"])
def test_everyone_is_a_candidate_when_nobody_lists_the_model(known: bool) -> None:
    pool = make_pool("a", "b")
    if known:
        knows(pool.nodes[0], ["qwen"])
        knows(pool.nodes[1], [])
    assert sorted(urls(pool.candidates("new-model"))) == ["a", "b"]


def test_a_backend_that_would_swap_models_comes_last_even_when_idle() -> None:
    pool = make_pool("a", "b", "c", "d")
    for node, in_flight in zip(pool.nodes, [2, 0, 1, 5], strict=True):
        knows(node, ["m", "other"], loaded=("m",) if node is pool.nodes[3] else ("other",))
        node.in_flight = in_flight
    for _ in range(3):
        assert urls(pool.candidates("m")) == ["d", "b", "c", "a"]


def test_a_backend_with_nothing_in_memory_shares_the_load() -> None:
    # The bug of "ties rotate": b never took a turn once a held the model, because
    # residency outranked an idle b that holds nothing.
    pool = make_pool("a", "b")
    knows(pool.nodes[0], ["m"], loaded=("m",))
    knows(pool.nodes[1], ["m"])
    served = [take(pool) for _ in range(20)]
    for slot in served:
        pool.release(slot)
    assert sorted(urls([slot.node for slot in served])).count("a") == 10


def test_ties_rotate() -> None:
    pool = make_pool("a", "b", "c")
    firsts = [urls(pool.candidates("m")) for _ in range(4)]
    assert firsts == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_sequential_requests_alternate_after_each_success() -> None:
    pool = make_pool("a", "b")
    for node in pool.nodes:
        knows(node, ["m"])
    served = []
    for _ in range(20):
        slot = take(pool)
        pool.succeeded(slot.node, "m")  # it now holds m: the other one must still get turns
        pool.release(slot)
        served.append(slot.node)
    assert urls(served) == ["a", "b"] * 10


def test_a_busy_backend_comes_last_for_its_retry_after(clock: list[float]) -> None:
    pool = make_pool("a", "b", "c")
    pool.busy_for(pool.nodes[0], 2.0)
    assert [urls(pool.candidates("m"))[-1] for _ in range(3)] == ["a", "a", "a"]
    clock[0] += 2.0
    assert {urls(pool.candidates("m"))[0] for _ in range(3)} == {"a", "b", "c"}


def test_round_robin_ignores_load() -> None:
    pool = make_pool("a", "b", "c", routing="round-robin")
    pool.nodes[0].in_flight = 9
    assert [urls(pool.candidates("m"))[0] for _ in range(3)] == ["a", "b", "c"]


def test_an_unknown_routing_is_refused() -> None:
    with pytest.raises(ValueError, match="routing"):
        make_pool("a", routing="random")


@pytest.mark.parametrize(("listed", "requested"), [
    ("llama3.2:latest", "llama3.2"), ("llama3.2:latest", "llama3.2:latest"),
    ("qwen", "qwen")], ids=["short-name", "full-name", "no-tag"])
def test_latest_aliases(listed: str, requested: str) -> None:
    pool = make_pool("a", "b")
    knows(pool.nodes[0], ["other"])
    knows(pool.nodes[1], [listed], loaded=(listed,))
    assert pool.nodes[1].serves(requested) is True
    assert urls(pool.candidates(requested)) == ["b"]
    assert requested in pool.nodes[1].loaded


def test_success_marks_the_model_loaded_under_both_names() -> None:
    pool = make_pool("a", "b")
    for node in pool.nodes:
        knows(node, ["llama3.2:latest"])
    pool.succeeded(pool.nodes[1], "llama3.2:latest")
    assert pool.nodes[1].loaded == {"llama3.2", "llama3.2:latest"}
    pool.nodes[0].loaded = frozenset({"other"})  # a would have to swap it out
    assert urls(pool.candidates("llama3.2")) == ["b", "a"]


def test_excluded_backends_are_skipped() -> None:
    pool = make_pool("a", "b")
    assert urls(pool.candidates("m", exclude=[pool.nodes[0]])) == ["b"]
    assert pool.acquire("m", pool.nodes, time.monotonic() + 1, lambda: False) is None


# --- circuit breaker ---------------------------------------------------------------------

def test_circuit_opens_after_consecutive_failures_and_cools_down(clock: list[float]) -> None:
    pool = make_pool("a", "b", breaker_failures=3, breaker_cooldown=10.0)
    a = pool.nodes[0]
    for _ in range(2):
        pool.failed(a, "backend_unavailable", "refused")
    assert "a" in urls(pool.candidates("m"))
    assert a.status(clock[0])["circuit"] == "closed"
    pool.failed(a, "backend_unavailable", "refused")
    assert urls(pool.candidates("m")) == ["b"]
    assert a.status(clock[0]) | {"models": None} == {
        "url": "http://a:11434", "kind": "ollama", "ok": False, "circuit": "open",
        "in_flight": 0, "models": None, "loaded": [], "error": "refused"}
    clock[0] += 9.9
    assert urls(pool.candidates("m")) == ["b"]
    clock[0] += 0.1
    assert "a" in urls(pool.candidates("m"))  # half-open: it gets one more try
    pool.failed(a, "backend_timeout", "slow")  # ... and one failure opens it again
    assert urls(pool.candidates("m")) == ["b"]
    assert a.status(clock[0])["error"] == "slow"


@pytest.mark.parametrize("closer", ["succeeded", "probed"])
def test_success_or_probe_closes_the_circuit(clock: list[float], closer: str) -> None:
    pool = make_pool("a", breaker_failures=1, breaker_cooldown=60.0)
    a = pool.nodes[0]
    pool.failed(a, "backend_unavailable", "refused")
    assert pool.candidates("m") == []
    if closer == "succeeded":
        pool.succeeded(a, "m")
    else:
        pool.probed(a, Probe([{"id": "m"}], set(), "0.12.0"))
        assert (a.models, a.version) == ({"m"}, "0.12.0")
    assert (a.failures, a.open_until, a.last_error) == (0, 0.0, None)
    assert pool.candidates("m") == [a]
    assert a.status(clock[0])["ok"] is True


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    pool = make_pool("a", breaker_failures=2)
    a = pool.nodes[0]
    pool.failed(a, "backend_unavailable", "x")
    pool.succeeded(a, "m")
    pool.failed(a, "backend_unavailable", "x")
    assert pool.candidates("m") == [a]


def test_unavailable_when_every_circuit_is_open(clock: list[float]) -> None:
    pool = make_pool("a", "b", breaker_failures=1, breaker_cooldown=30.0)
    pool.failed(pool.nodes[0], "backend_unavailable", "x")
    clock[0] += 25.6
    pool.failed(pool.nodes[1], "backend_unavailable", "x")
    assert pool.acquire("m", (), clock[0] + 60, lambda: False) is None
    error = pool.unavailable("m")
    assert isinstance(error, NoBackendAvailable)
    assert (error.status, error.type) == (503, "no_backend_available")
    assert error.headers == {"Retry-After": "4"}  # a reopens first, in 4.4 s
    assert "'m'" in error.message
    clock[0] += 4.3
    assert pool.unavailable("m").headers == {"Retry-After": "1"}  # never less than 1


# --- admission: the same rules in this process and in Redis ------------------------------

@pytest.fixture(params=["local", "redis"])
def capped_pool(request: pytest.FixtureRequest) -> Callable[..., BackendPool]:
    """Return a factory of pools whose slots live in this process, or in a real Redis."""

    def factory(*names: str, max_concurrency: int = 1, queue_size: int = 100,
                queue_timeout: float = 30.0, **options: Any) -> BackendPool:
        local = LocalAdmission(max_concurrency, queue_size=queue_size,
                               queue_timeout=queue_timeout)
        if request.param == "local":
            return make_pool(*names, admission=local, **options)
        server = request.getfixturevalue("module_redis")
        shared = SharedAdmission(server.client(), max_concurrency, fallback=local,
                                 queue_size=queue_size, queue_timeout=queue_timeout,
                                 prefix=f"t-{uuid.uuid4().hex[:8]}:")
        return make_pool(*names, admission=shared, **options)

    return factory


class Acquirer(threading.Thread):
    """Call pool.acquire in a thread; keep what it returned or raised."""

    def __init__(self, pool: BackendPool, model: str = "m", deadline: float = 30.0,
                 gone: Callable[[], bool] = lambda: False) -> None:
        super().__init__(daemon=True)
        self.pool, self.model, self.gone = pool, model, gone
        self.deadline = time.monotonic() + deadline
        self.slot: Slot | None = None
        self.error: Exception | None = None
        self.took = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.slot = self.pool.acquire(self.model, (), self.deadline, self.gone)
        except Exception as exc:  # kept for the test to inspect
            self.error = exc
        self.took = time.monotonic() - started

    def result(self) -> Node | Exception | None:
        self.join(5)
        assert not self.is_alive(), "acquire did not return"
        return self.error or (self.slot.node if self.slot else None)


def queued(pool: BackendPool, count: int) -> None:
    """Wait until ``count`` requests are queued."""
    deadline = time.monotonic() + 2
    while pool.admission.waiting != count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{pool.admission.waiting} queued, not {count}"  # type: ignore[attr-defined]
        time.sleep(0.005)


def take(pool: BackendPool, model: str = "m") -> Slot:
    slot = pool.acquire(model, (), time.monotonic() + 5, lambda: False)
    assert slot is not None
    return slot


def start(pool: BackendPool, queue_length: int, **options: Any) -> Acquirer:
    waiter = Acquirer(pool, **options)
    waiter.start()
    queued(pool, queue_length)
    return waiter


def test_cap_is_respected_and_release_hands_the_slot_over(
        capped_pool: Callable[..., BackendPool]) -> None:
    pool = capped_pool("a", max_concurrency=2)
    a = pool.nodes[0]
    slots = [take(pool), take(pool)]
    assert [s.node for s in slots] == [a, a] and a.in_flight == 2
    waiter = start(pool, 1)
    time.sleep(0.05)
    assert waiter.is_alive() and a.in_flight == 2
    pool.release(slots[0])
    assert waiter.result() is a
    assert a.in_flight == 2 and not pool.admission.waiting  # type: ignore[attr-defined]
    assert waiter.slot is not None
    for slot in (slots[1], waiter.slot):
        pool.release(slot)
    assert a.in_flight == 0
    assert take(pool).node is a and take(pool).node is a  # both slots are free again


def test_no_cap_admits_everyone() -> None:
    pool = make_pool("a", max_concurrency=0, queue_size=0)
    for _ in range(50):
        take(pool)
    assert pool.nodes[0].in_flight == 50


def test_one_callers_queue_is_first_in_first_out(capped_pool: Callable[..., BackendPool]) -> None:
    pool = capped_pool("a", max_concurrency=1)
    a = take(pool)
    first, second = start(pool, 1), start(pool, 2)
    pool.release(a)
    assert first.result() is pool.nodes[0]
    assert second.is_alive()
    assert first.slot is not None
    pool.release(first.slot)
    assert second.result() is pool.nodes[0]
    assert second.slot is not None
    pool.release(second.slot)
    assert pool.nodes[0].in_flight == 0


def test_a_freed_slot_goes_to_the_first_waiter_that_backend_can_serve(
        capped_pool: Callable[..., BackendPool]) -> None:
    pool = capped_pool("a", "b", max_concurrency=1)
    a, b = pool.nodes
    knows(a, ["x"])
    knows(b, ["y"])
    x_slot, y_slot = take(pool, "x"), take(pool, "y")
    assert (x_slot.node, y_slot.node) == (a, b)
    wants_y, wants_x = start(pool, 1, model="y"), start(pool, 2, model="x")
    pool.release(x_slot)
    assert wants_x.result() is a  # jumped the queue: a cannot serve the first waiter
    assert wants_y.is_alive()
    pool.release(y_slot)
    assert wants_y.result() is b


def test_a_freed_slot_on_an_open_circuit_is_not_handed_over(
        capped_pool: Callable[..., BackendPool]) -> None:
    pool = capped_pool("a", max_concurrency=1, breaker_failures=1, queue_timeout=0.3)
    slot = take(pool)
    waiter = start(pool, 1)
    pool.failed(slot.node, "backend_unavailable", "refused")
    pool.release(slot)
    assert slot.node.in_flight == 0
    assert isinstance(waiter.result(), BackendBusy)


def test_a_waiter_takes_a_backend_whose_circuit_closed_again(
        capped_pool: Callable[..., BackendPool]) -> None:
    pool = capped_pool("a", "b", max_concurrency=1, breaker_failures=1, breaker_cooldown=60)
    a, b = pool.nodes
    pool.failed(b, "backend_unavailable", "refused")  # b: no traffic
    assert take(pool).node is a  # a: full
    waiter = start(pool, 1)
    time.sleep(0.05)
    assert waiter.is_alive()
    pool.probed(b, Probe([{"id": "m"}], set()))  # b answers its probe: circuit closed
    assert waiter.result() is b  # within a poll, though no slot was released
    assert waiter.took < 1.5 and not pool.admission.waiting  # type: ignore[attr-defined]
    assert (a.in_flight, b.in_flight) == (1, 1)


@pytest.mark.parametrize("queue_size", [0, 2], ids=["no-queue", "queue-of-2"])
def test_full_queue_is_busy_at_once(capped_pool: Callable[..., BackendPool],
                                    queue_size: int) -> None:
    pool = capped_pool("a", max_concurrency=1, queue_size=queue_size, queue_timeout=30)
    slot = take(pool)
    waiters = [start(pool, i + 1) for i in range(queue_size)]
    started = time.monotonic()
    with pytest.raises(BackendBusy, match="already queued") as raised:
        pool.acquire("m", (), time.monotonic() + 30, lambda: False)
    assert time.monotonic() - started < 0.1
    assert (raised.value.status, raised.value.headers) == (503, {"Retry-After": "1"})
    for waiter in waiters:
        pool.release(slot)
        assert waiter.result() is slot.node
        assert waiter.slot is not None
        slot = waiter.slot
    pool.release(slot)
    assert slot.node.in_flight == 0


@pytest.mark.parametrize(("queue_timeout", "deadline"), [(0.2, 30.0), (30.0, 0.2)],
                         ids=["queue-timeout", "request-deadline"])
def test_waiting_too_long_is_busy(capped_pool: Callable[..., BackendPool], queue_timeout: float,
                                  deadline: float) -> None:
    pool = capped_pool("a", max_concurrency=1, queue_timeout=queue_timeout)
    slot = take(pool)
    waiter = start(pool, 1, deadline=deadline)
    error = waiter.result()
    assert isinstance(error, BackendBusy) and error.headers == {"Retry-After": "1"}
    assert 0.18 < waiter.took < 1.0
    assert not pool.admission.waiting  # type: ignore[attr-defined]
    pool.release(slot)
    assert slot.node.in_flight == 0
    assert take(pool).node is slot.node  # the slot was freed, not handed to the leaver


def test_a_client_that_leaves_leaves_the_queue(capped_pool: Callable[..., BackendPool],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission_module, "POLL_SECONDS", 0.01)
    monkeypatch.setattr("flask_inference_gateway.fleet.shared.POLL_SECONDS", 0.01)
    pool = capped_pool("a", max_concurrency=1, queue_timeout=30)
    slot = take(pool)
    left = threading.Event()
    waiter = start(pool, 1, gone=left.is_set)
    time.sleep(0.05)
    assert waiter.is_alive()
    left.set()
    assert isinstance(waiter.result(), ClientLeft)
    assert waiter.took < 1.0 and not pool.admission.waiting  # type: ignore[attr-defined]
    pool.release(slot)  # nobody is waiting: the slot is freed, not handed to the leaver
    assert slot.node.in_flight == 0
    assert take(pool).node is slot.node
