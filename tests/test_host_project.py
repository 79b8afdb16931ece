"""A host project whose own package is named ``app`` installs the gateway and mounts it."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from setuptools import find_packages

from tests.conftest import ROOT, free_port
from tests.fake_ollama import FakeOllama
from tests.sse import parse_sse

HOST = Path(__file__).resolve().parent / "host_project"


def test_the_distribution_installs_only_the_library() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = [p.strip() for p in config["options.packages.find"]["include"].split(",")]
    packages = find_packages(where=str(ROOT), include=include)
    assert "flask_inference_gateway" in packages
    assert all(p.split(".")[0] == "flask_inference_gateway" for p in packages), packages


@pytest.fixture
def host_server(fake_ollama: FakeOllama, tmp_path: Path) -> Iterator[str]:
    """Run the host project under gunicorn + gevent from its own folder."""
    port = free_port()
    # Not even an empty PROMETHEUS_MULTIPROC_DIR: prometheus_client would then write its
    # files into the current folder (the host project's source tree).
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(HOST_OLLAMA_URL=fake_ollama.url)
    log_path = tmp_path / "host.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1",
             "-k", "flask_inference_gateway.worker.GatewayWorker", "app:create_app()"],
            cwd=HOST, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                requests.get(url + "/ai/healthz", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_host_project_stays_clean(host_server: str) -> None:
    requests.post(host_server + "/ai/v1/generate", timeout=10, json={"prompt": "hi"})
    assert not list(HOST.glob("*.db")), "metrics files were written into the host project"


def test_the_hosts_app_package_is_its_own(host_server: str) -> None:
    page = requests.get(host_server + "/", timeout=5).json()
    assert page["package"] == "app"
    assert Path(page["file"]).resolve() == (HOST / "app" / "__init__.py").resolve()


def test_streams_through_the_gateway_under_ai(host_server: str) -> None:
    response = requests.post(host_server + "/ai/v1/generate/stream", timeout=10,
                             json={"prompt": "hi", "model": "sim", "max_tokens": 3})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(response.content)
    assert [data["text"] for _, data in events[:-1]] == [" tok0", " tok1", " tok2"]
    assert events[-1][1]["done"] is True
    assert requests.post(host_server + "/v1/generate", json={"prompt": "x"},
                         timeout=5).status_code == 404
