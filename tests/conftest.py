"""Shared fixtures: the app and its client, a fake Ollama, mocked HTTP, a real gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent
MOCK_URL = "http://ollama.test:11434"
TEST_KEY = "gw-test-key-not-secret"


def free_port() -> int:
    """Return a loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """Run a fake Ollama server on a free loopback port."""
    with FakeOllama(tokens=8) as fake:
        yield fake


@pytest.fixture
def make_app(fake_ollama: FakeOllama, tmp_path: Path) -> Callable[..., Flask]:
    """Return a factory of test apps pointed at the fake Ollama, with overrides."""

    def factory(**overrides: Any) -> Flask:
        config = {"TESTING": True, "GATEWAY_OLLAMA_URL": fake_ollama.url,
                  "GATEWAY_READ_TIMEOUT": 5.0, "GATEWAY_FIRST_TOKEN_TIMEOUT": 5.0,
                  "GATEWAY_TOTAL_TIMEOUT": 30.0, "GATEWAY_PROBE_SECONDS": 0,
                  "GATEWAY_WORKERS": 1, "GATEWAY_DEFAULT_MODEL": "llama3.2",
                  "GATEWAY_API_KEYS": f"tester:{TEST_KEY}",
                  "GATEWAY_API_KEYS_FILE": str(tmp_path / "keys.json"),
                  "GATEWAY_POLL_SECONDS": 0, "GATEWAY_LOG_FORMAT": "text"}
        return create_app({**config, **overrides})

    return factory


@pytest.fixture
def make_client(make_app: Callable[..., Flask]) -> Callable[..., FlaskClient]:
    """Return a factory of test clients that send the test key, with app overrides."""

    def factory(**overrides: Any) -> FlaskClient:
        client = make_app(**overrides).test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_KEY}"
        return client

    return factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """Return a gateway app in front of the fake Ollama."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of ``app`` that sends the test key."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_KEY}"
    return client


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    """Mock every requests call; unmatched calls fail the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@dataclass
class GatewayProcess:
    """A gateway running under real gunicorn + gevent."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Return what gunicorn and the gateway wrote so far."""
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Return the pids of the gunicorn workers."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        """Stop gunicorn and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(env: dict[str, str], log_path: Path, timeout: float = 20) -> GatewayProcess:
    """Start ``gunicorn -c gunicorn.conf.py wsgi:app`` and wait until /healthz answers."""
    port = free_port()
    full_env = {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{port}", "GATEWAY_WORKERS": "1",
                "GATEWAY_AUTH_DISABLED": "1", "GATEWAY_RATE_LIMIT_DISABLED": "1",
                "GATEWAY_LOG_LEVEL": "info", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                 "wsgi:app"], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    server = GatewayProcess(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{server.log()}")
        try:
            if requests.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:  # not listening yet, or a worker still booting
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{server.log()}")


@pytest.fixture
def gateway_server(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Return a starter of real gunicorn gateways; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        server = start_gateway(env, tmp_path / f"gunicorn-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[Any]:
    """Run one Redis for a whole module (tests keep apart by key name); skip without one."""
    # Imported here: redis_server imports free_port from this module.
    from tests.integration.redis_server import AVAILABLE, RedisServer

    if not AVAILABLE:
        pytest.skip("redis-server is not installed (CI installs it)")
    with RedisServer() as server:
        yield server
