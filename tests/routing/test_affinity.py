"""Prefix affinity: one conversation, one backend, across turns, workers and replicas."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flask_inference_gateway.core.types import GenerationRequest, Message, Op, Options
from flask_inference_gateway.routing.affinity import by_affinity, prefix_key
from flask_inference_gateway.routing.pool import BackendPool
from tests.routing.test_pool import Stub, knows, urls

SYSTEM = Message("system", "You are a helpful assistant. " * 20)


@dataclass(eq=False)
class Loaded:
    url: str
    in_flight: int = 0


def turn(session: int, turns: int) -> GenerationRequest:
    """Return the request of a conversation's ``turns``-th turn."""
    messages = [SYSTEM, Message("user", f"Session {session}: plan my trip.")]
    for n in range(1, turns):
        messages += [Message("assistant", f"Answer {n}."), Message("user", f"Question {n}?")]
    return GenerationRequest(Op.CHAT, Options(16), model="m", messages=tuple(messages))


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    keys = {prefix_key(turn(7, n), 4096) for n in range(1, 9)}
    assert len(keys) == 1
    assert prefix_key(turn(8, 1), 4096) not in keys  # another conversation


def test_a_generation_is_keyed_by_its_system_prompt_and_prompt_start() -> None:
    def generate(prompt: str) -> GenerationRequest:
        return GenerationRequest(Op.GENERATE, Options(16), prompt=prompt, system="Be brief.")

    assert prefix_key(generate("x" * 100 + "a"), 50) == prefix_key(generate("x" * 100 + "b"), 50)
    assert prefix_key(generate("y" * 100), 50) != prefix_key(generate("x" * 100), 50)


def test_the_order_is_the_same_in_every_worker() -> None:
    one = [Loaded(f"http://gpu{i}:11434") for i in range(4)]
    other = [Loaded(f"http://gpu{i}:11434") for i in reversed(range(4))]  # another order
    for session in range(20):
        key = prefix_key(turn(session, 1), 4096)
        assert [n.url for n in by_affinity(one, key, 0.25)] == [
            n.url for n in by_affinity(other, key, 0.25)]


def test_keys_spread_over_the_backends() -> None:
    nodes = [Loaded(f"http://gpu{i}:11434") for i in range(4)]
    firsts = Counter(by_affinity(nodes, prefix_key(turn(s, 1), 4096), 0.25)[0].url
                     for s in range(400))
    assert len(firsts) == 4 and min(firsts.values()) >= 70  # 100 each, give or take


def test_a_backend_leaving_moves_only_its_own_keys() -> None:
    nodes = [Loaded(f"http://gpu{i}:11434") for i in range(4)]
    keys = [prefix_key(turn(s, 1), 4096) for s in range(200)]
    before = {key: by_affinity(nodes, key, 0.25)[0].url for key in keys}
    after = {key: by_affinity(nodes[:3], key, 0.25)[0].url for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(before[key] == "http://gpu3:11434" for key in moved)


def test_a_preferred_backend_over_the_bound_yields_to_the_next_choice() -> None:
    nodes = [Loaded(f"http://gpu{i}:11434") for i in range(4)]
    key = prefix_key(turn(1, 1), 4096)
    preferred = by_affinity(nodes, key, 0.25)[0]
    preferred.in_flight = 3  # mean with this request: 1, bound ceil(1.25) = 2
    nodes[[n.url for n in nodes].index(preferred.url) - 1].in_flight = 1
    order = by_affinity(nodes, key, 0.25)
    # The key's next choice under the bound takes it; the preferred one comes last.
    assert order[0] is not preferred and order[0].in_flight < 2
    assert order[-1] is preferred
    preferred.in_flight = 0  # under the bound again: back to its own
    assert by_affinity(nodes, key, 0.25)[0] is preferred


def test_prefix_routing_in_the_pool_keeps_a_conversation_on_one_backend() -> None:
    pool = BackendPool([Stub(f"gpu{i}") for i in range(4)], routing="prefix")  # type: ignore[misc]
    for node in pool.nodes:
        knows(node, ["m"], loaded=("m",))
    for session in range(10):
        key = prefix_key(turn(session, 1), 4096)
        chosen = {urls(pool.candidates("m", key=key))[0] for _ in range(8)}
        assert len(chosen) == 1


def test_prefix_routing_still_puts_a_swap_last() -> None:
    pool = BackendPool([Stub(f"gpu{i}") for i in range(4)], routing="prefix")  # type: ignore[misc]
    for node in pool.nodes:
        knows(node, ["m", "other"], loaded=("other",))
    knows(pool.nodes[2], ["m"], loaded=("m",))
    for session in range(10):
        assert urls(pool.candidates("m", key=prefix_key(turn(session, 1), 4096)))[0] == "gpu2"
