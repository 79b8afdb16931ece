"""Which gunicorn worker holds a client's connection, read from Linux's /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.conftest import GatewayProcess


def worker_sockets(server: GatewayProcess) -> dict[int, set[str]]:
    """Return, per worker pid, the socket inodes of its established client connections."""
    port = urlsplit(server.url).port
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            established.add(f"socket:[{fields[9]}]")
    held: dict[int, set[str]] = {}
    for pid in server.worker_pids():
        links = set()
        with suppress(OSError):  # a worker that just exited
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):  # an fd closed while we look
                    links.add(os.readlink(fd))
        held[pid] = links & established
    return held


@dataclass
class Placed:
    """A kept-alive session and the worker whose connection serves it."""

    session: requests.Session
    pid: int
    inode: str


def place(server: GatewayProcess, session: requests.Session) -> Placed | None:
    """Connect ``session`` with GET /healthz; return the worker whose socket took it."""
    before = worker_sockets(server)
    with session.get(server.url + "/healthz", timeout=5) as response:
        assert response.status_code == 200
    new = [(pid, inode) for pid, inodes in worker_sockets(server).items()
           for inode in inodes - before.get(pid, set())]
    return Placed(session, *new[0]) if len(new) == 1 else None


@contextmanager
def sessions_on_each_worker(server: GatewayProcess, per_worker: int) -> Iterator[list[Placed]]:
    """Open kept-alive sessions until each worker holds ``per_worker`` of them (up to 10 s)."""
    chosen: dict[int, list[Placed]] = {pid: [] for pid in server.worker_pids()}
    assert len(chosen) == 2, chosen
    deadline = time.monotonic() + 10
    with ExitStack() as stack:
        while any(len(group) < per_worker for group in chosen.values()):
            assert time.monotonic() < deadline, {pid: len(g) for pid, g in chosen.items()}
            placed = place(server, stack.enter_context(requests.Session()))
            if placed and len(chosen[placed.pid]) < per_worker:
                chosen[placed.pid].append(placed)
            time.sleep(0.02)
        yield [placed for group in chosen.values() for placed in group]


def still_placed(server: GatewayProcess, placed: list[Placed]) -> bool:
    """Return whether every session still uses the connection it was placed on."""
    held = worker_sockets(server)
    return all(p.inode in held.get(p.pid, set()) for p in placed)
