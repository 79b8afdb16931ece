"""ClientWatch: a request whose client left while it waited gets its upstream socket shut."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from flask_inference_gateway.upstream import watch
from flask_inference_gateway.upstream.watch import ClientWatch, track_connection


@pytest.fixture
def upstream() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Return a connected pair: the gateway's end of an upstream connection, and the backend's."""
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_gone_client_shuts_the_upstream_socket_and_wakes_the_reader(upstream) -> None:
    ours, theirs = upstream
    client_left = threading.Event()
    woke: list[bytes] = []
    with ClientWatch(client_left.is_set) as seen:
        track_connection(SimpleNamespace(sock=ours))
        reader = threading.Thread(target=lambda: woke.append(ours.recv(10)))
        reader.start()
        time.sleep(0.1)
        client_left.set()
        reader.join(3 * watch.POLL_SECONDS + 1)
    assert woke == [b""]  # the blocked read returned: the socket was shut down
    assert seen.left is True
    assert theirs.recv(10) == b""  # and the backend saw its client leave


def test_a_present_client_is_left_alone(upstream) -> None:
    ours, theirs = upstream
    with ClientWatch(lambda: False) as seen:
        track_connection(SimpleNamespace(sock=ours))
        time.sleep(2.5 * watch.POLL_SECONDS)
    theirs.sendall(b"token")
    assert ours.recv(10) == b"token" and seen.left is False


def test_leaving_the_block_stops_watching(upstream) -> None:
    ours, _ = upstream
    outside = threading.Event()  # the client "leaves" only once the block is over
    with ClientWatch(outside.is_set) as seen:
        track_connection(SimpleNamespace(sock=ours))
    outside.set()
    time.sleep(2.5 * watch.POLL_SECONDS)
    assert seen not in watch._WATCHING and seen.left is False


def test_connections_are_tracked_only_inside_a_watch() -> None:
    track_connection(SimpleNamespace(sock=None))  # outside any watch: ignored
    with ClientWatch(lambda: False) as seen:
        connection = SimpleNamespace(sock=None)
        track_connection(connection)
    assert seen.connection is connection
