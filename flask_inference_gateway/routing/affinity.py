"""Prefix affinity: send a conversation back to the backend that has its prefix cached.

Ollama, llama.cpp and vLLM keep the KV cache of a prompt prefix they have
just seen; a multi-turn chat or an agent loop resends the same growing prefix
every turn, so the turn that lands on the backend that served the last one
skips most of its prefill. The key of a request is the start of what stays the
same across its turns: the messages up to and including the first user
message (a generation's system prompt and prompt), at most ``chars``
characters. Each key ranks the backends by rendezvous hashing (the same order
in every worker and replica, and only the keys of a backend that leaves or
joins move); the first in that order whose load is under the bound takes the
request (consistent hashing with bounded loads, Mirrokni et al. 2016), so one
hot prefix cannot pile everything onto one GPU.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol

from flask_inference_gateway.core.types import GenerationRequest, Op


class Loaded(Protocol):
    """What affinity needs of a backend: its URL and its requests in flight."""

    in_flight: int

    @property
    def url(self) -> str: ...


def prefix_key(request: GenerationRequest, chars: int) -> bytes:
    """Return the digest of the part of ``request`` that its later turns resend first."""
    if request.op is Op.GENERATE:
        text = (request.system or "") + "\x00" + request.prompt
    else:
        leading = []
        for message in request.messages:
            leading.append(f"{message.role}\x00{message.content}")
            if message.role == "user":
                break
        text = "\x00".join(leading)
    return hashlib.blake2b(text[:chars].encode(), digest_size=16).digest()


def rank(key: bytes, url: str) -> bytes:
    """Return the rendezvous score of one backend for one key (highest wins)."""
    return hashlib.blake2b(url.encode(), digest_size=8, key=key).digest()


def by_affinity(nodes: Sequence[Loaded], key: bytes, balance: float) -> list[Loaded]:
    """Return ``nodes`` in the key's order, those over the load bound last (least busy first).

    The bound is ``ceil((1 + balance) × mean load)``, the mean counting the
    request being placed.
    """
    ranked = sorted(nodes, key=lambda node: rank(key, node.url), reverse=True)
    bound = math.ceil((1 + balance) * (sum(n.in_flight for n in nodes) + 1) / len(nodes))
    within = [node for node in ranked if node.in_flight < bound]
    over = sorted((node for node in ranked if node.in_flight >= bound),
                  key=lambda node: node.in_flight)
    return within + over
