"""Admission's fair queue, in this process and in Redis: callers take turns, by weight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from flask_inference_gateway.core.types import Caller
from flask_inference_gateway.fleet.admission import Admission, FairClock, Grant, Want


def want(caller: Caller, backends: tuple[str, ...] = ("a",), wait: float = 30.0) -> Want:
    return Want(list(backends), caller, time.monotonic() + wait, lambda: False,
                lambda: list(backends), "m")


class Queue:
    """Requests queued one after another; grants are recorded in the order they land."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.granted: list[tuple[str, Grant]] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def enqueue(self, caller: Caller, count: int = 1) -> None:
        for _ in range(count):
            before = self.admission.waiting  # type: ignore[attr-defined]
            thread = threading.Thread(target=self._admit, args=(caller,), daemon=True)
            self.threads.append(thread)
            thread.start()
            deadline = time.monotonic() + 2
            while self.admission.waiting == before:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the request was not queued"
                time.sleep(0.002)

    def _admit(self, caller: Caller) -> None:
        grant = self.admission.admit(want(caller))
        with self._lock:
            self.granted.append((caller.name, grant))

    def serve(self, first: Grant, count: int) -> list[str]:
        """Free ``count`` slots one at a time, each as its holder would; return who got them."""
        holding = first
        for turn in range(count):
            self.admission.release(holding)
            deadline = time.monotonic() + 3
            while len(self.granted) <= turn:
                assert time.monotonic() < deadline, f"nobody took slot {turn}"
                time.sleep(0.002)
            holding = self.granted[turn][1]
        order = [name for name, _ in self.granted[:count]]
        self._drain(holding, count)
        return order

    def _drain(self, holding: Grant, served: int) -> None:
        """Serve every request still queued, so that no thread outlives the test."""
        while any(thread.is_alive() for thread in self.threads):
            self.admission.release(holding)
            deadline = time.monotonic() + 3
            while len(self.granted) <= served:
                assert time.monotonic() < deadline, "a queued request was never served"
                time.sleep(0.002)
            holding = self.granted[served][1]
            served += 1
        self.admission.release(holding)


def test_a_light_caller_waits_behind_one_request_not_behind_a_flood(
        make_admission: Callable[..., Admission]) -> None:
    admission = make_admission(1)
    first = admission.admit(want(Caller("heavy")))
    queue = Queue(admission)
    queue.enqueue(Caller("heavy"), 10)
    queue.enqueue(Caller("light"))
    order = queue.serve(first, 3)
    # FIFO would serve it 11th; fair queueing serves it within the first two slots.
    assert "light" in order[:2], order


def test_weights_share_the_slots(make_admission: Callable[..., Admission]) -> None:
    admission = make_admission(1)
    first = admission.admit(want(Caller("x")))
    queue = Queue(admission)
    queue.enqueue(Caller("double", weight=2.0), 8)
    queue.enqueue(Caller("single"), 8)
    order = queue.serve(first, 9)
    assert order.count("double") == 6 and order.count("single") == 3, order


def test_a_priority_caller_is_served_first(make_admission: Callable[..., Admission]) -> None:
    admission = make_admission(1)
    first = admission.admit(want(Caller("x")))
    queue = Queue(admission)
    queue.enqueue(Caller("a"), 3)
    queue.enqueue(Caller("b"), 3)
    queue.enqueue(Caller("urgent", priority=True), 2)
    assert queue.serve(first, 3)[:2] == ["urgent", "urgent"]


def test_a_quiet_caller_starts_level_with_the_clock() -> None:
    clock = FairClock()
    tags = [clock.tag(Caller("busy")) for _ in range(5)]
    clock.served(tags[2])
    # The newcomer is not owed the turns it did not ask for: it lands after tag 3, not at 1.
    assert clock.tag(Caller("new")) == pytest.approx(tags[2] + 1)
