"""GPU gauges from NVML (a fake module here), model residency from /api/ps, one poller."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.observability import gpu
from flask_inference_gateway.observability.metrics import BACKEND_UP
from flask_inference_gateway.upstream.ollama import OllamaBackend
from tests.fake_ollama import FakeOllama


def fake_nvml(count: int = 2) -> types.ModuleType:
    """Return a stand-in for pynvml with ``count`` GPUs."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30,
                                                                    total=80 * 2**30)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37 + h)
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 61
    nvml.nvmlDeviceGetPowerUsage = lambda h: 312_500
    return nvml


def value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_gpu_readings_become_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    nvml = gpu.load_nvml()
    gpu.record_gpus(gpu.read_gpus(nvml))
    labels = {"gpu": "1", "name": "NVIDIA H100 80GB HBM3"}
    assert value("gateway_gpu_utilization_ratio", **labels) == pytest.approx(0.38)
    assert value("gateway_gpu_memory_used_bytes", **labels) == 2 * 2**30
    assert value("gateway_gpu_memory_total_bytes", **labels) == 80 * 2**30
    assert value("gateway_gpu_temperature_celsius", **labels) == 61
    assert value("gateway_gpu_power_watts", **labels) == pytest.approx(312.5)


def test_without_nvml_there_are_no_gpu_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("pynvml")

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert gpu.load_nvml() is None


def test_residency_follows_api_ps(fake_ollama: FakeOllama) -> None:
    fake_ollama.loaded = [{"name": "sim:latest", "model": "sim:latest", "size": 10,
                           "size_vram": 7_000_000, "expires_at": "2026-12-01T00:00:00Z"}]
    backend = OllamaBackend(fake_ollama.url, timeouts=Timeouts(connect=1, first_token=2),
                            pool_size=2)
    poll = gpu.backend_poll(fake_ollama.url, backend.loaded_models, BACKEND_UP)
    poll()
    labels = {"backend": fake_ollama.url, "model": "sim:latest"}
    assert value("gateway_model_loaded", **labels) == 1
    assert value("gateway_model_vram_bytes", **labels) == 7_000_000
    assert value("gateway_backend_up", backend=fake_ollama.url) == 1
    fake_ollama.loaded = []
    poll()
    assert value("gateway_model_loaded", **labels) == 0


def test_a_down_backend_reads_as_down() -> None:
    def refuse() -> list:
        raise ConnectionError("refused")

    gpu.backend_poll("http://down:1", refuse, BACKEND_UP)()
    assert value("gateway_backend_up", backend="http://down:1") == 0


def test_only_one_poller_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    first, second = gpu.Poller(lambda: None, 1), gpu.Poller(lambda: None, 1)
    assert first.holds_lock() and first.holds_lock()
    assert not second.holds_lock()
    first._lock_file.close()  # the holder dies: its lock is released
    assert second.holds_lock()
    second._lock_file.close()


def test_disabled_poller_never_starts() -> None:
    poller = gpu.Poller(lambda: None, 0)
    poller.ensure_started()
    assert poller._started_pid == 0


def test_the_first_requests_wait_for_the_first_poll() -> None:
    polls: list[float] = []

    def poll() -> None:
        time.sleep(0.2)
        polls.append(time.monotonic())

    poller = gpu.Poller(poll, 60, exclusive=False, first_wait=5)
    started = time.monotonic()
    poller.ensure_started()
    assert polls and polls[0] - started >= 0.2  # routed on what the first poll learnt
    again = time.monotonic()
    poller.ensure_started()
    assert time.monotonic() - again < 0.05  # later requests do not wait


def test_a_slow_first_poll_holds_the_first_request_no_longer_than_the_wait() -> None:
    poller = gpu.Poller(lambda: time.sleep(5), 60, exclusive=False, first_wait=0.2)
    started = time.monotonic()
    poller.ensure_started()
    assert 0.2 <= time.monotonic() - started < 1.0
