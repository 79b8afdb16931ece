"""GPU and model-residency gauges, refreshed by one background poller per gateway.

Every worker runs the poller loop, but only the one holding an exclusive lock
on a file in the metrics folder polls; when it dies its lock is released and
another worker takes over within one interval. NVML (nvidia-ml-py) reports each
GPU; each backend's /api/ps reports the models in VRAM. Without NVML the GPU
gauges are simply absent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

log = logging.getLogger(__name__)

_GPU_LABELS = ["gpu", "name"]
GPU_UTILIZATION = Gauge("gateway_gpu_utilization_ratio", "GPU busy fraction (0 to 1).",
                        _GPU_LABELS, multiprocess_mode="livemostrecent")
GPU_MEMORY_USED = Gauge("gateway_gpu_memory_used_bytes", "GPU memory in use.", _GPU_LABELS,
                        multiprocess_mode="livemostrecent")
GPU_MEMORY_TOTAL = Gauge("gateway_gpu_memory_total_bytes", "GPU memory in all.", _GPU_LABELS,
                         multiprocess_mode="livemostrecent")
GPU_TEMPERATURE = Gauge("gateway_gpu_temperature_celsius", "GPU temperature.", _GPU_LABELS,
                        multiprocess_mode="livemostrecent")
GPU_POWER = Gauge("gateway_gpu_power_watts", "GPU power draw.", _GPU_LABELS,
                  multiprocess_mode="livemostrecent")
MODEL_LOADED = Gauge("gateway_model_loaded", "1 while the backend holds the model in memory.",
                     ["backend", "model"], multiprocess_mode="livemostrecent")
MODEL_VRAM = Gauge("gateway_model_vram_bytes", "GPU memory the loaded model takes.",
                   ["backend", "model"], multiprocess_mode="livemostrecent")


def read_gpus(nvml: Any) -> list[dict[str, Any]]:
    """Return one reading per GPU from an initialised NVML module."""
    readings = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        readings.append({
            "gpu": str(index), "name": name.decode() if isinstance(name, bytes) else name,
            "utilization": nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
            "memory_used": memory.used, "memory_total": memory.total,
            "temperature": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "power": nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        })
    return readings


def record_gpus(readings: list[dict[str, Any]]) -> None:
    """Set the GPU gauges from ``read_gpus`` readings."""
    for r in readings:
        labels = (r["gpu"], r["name"])
        GPU_UTILIZATION.labels(*labels).set(r["utilization"])
        GPU_MEMORY_USED.labels(*labels).set(r["memory_used"])
        GPU_MEMORY_TOTAL.labels(*labels).set(r["memory_total"])
        GPU_TEMPERATURE.labels(*labels).set(r["temperature"])
        GPU_POWER.labels(*labels).set(r["power"])


def load_nvml() -> Any | None:
    """Return the initialised NVML module, or None where there is no NVIDIA GPU."""
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        return pynvml
    except Exception as exc:  # no package, no driver or no GPU: GPU gauges stay absent
        log.info("NVML unavailable, no GPU metrics: %s", exc)
        return None


class ResidencyTracker:
    """Keep the model gauges of one backend equal to its latest /api/ps answer."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._seen: set[str] = set()

    def record(self, models: list[dict[str, Any]]) -> None:
        """Mark the listed models loaded and every other model seen before unloaded."""
        loaded = set()
        for model in models:
            name = model.get("name") or model.get("model", "")
            loaded.add(name)
            MODEL_LOADED.labels(self.backend, name).set(1)
            MODEL_VRAM.labels(self.backend, name).set(model.get("size_vram", 0))
        for name in self._seen - loaded:
            MODEL_LOADED.labels(self.backend, name).set(0)
            MODEL_VRAM.labels(self.backend, name).set(0)
        self._seen |= loaded


class Poller:
    """Run ``poll`` every ``interval`` seconds: in one worker (``exclusive``) or in each."""

    def __init__(self, poll: Callable[[], None], interval: float, *,
                 exclusive: bool = True, first_wait: float = 0.0) -> None:
        self.poll = poll
        self.interval = interval
        self.exclusive = exclusive
        self.first_wait = first_wait  # how long the first requests wait for the first poll
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
        self.lock_path = os.path.join(folder, "gateway-poller.lock")
        self._started_pid = 0
        self._ready_pid = 0
        self._first_poll = threading.Event()
        self._lock_file: Any = None

    def ensure_started(self) -> None:
        """Start the loop in this process, once; the first requests wait (up to
        ``first_wait``) for its first poll, so they are routed on what it learnt."""
        if self.interval <= 0 or self._ready_pid == os.getpid():
            return
        if self._started_pid != os.getpid():
            self._started_pid = os.getpid()
            self._first_poll = threading.Event()
            threading.Thread(target=self._run, name="gateway-poller", daemon=True).start()
        if self.first_wait:
            self._first_poll.wait(self.first_wait)
        self._ready_pid = os.getpid()

    def holds_lock(self) -> bool:
        """Take the poller lock if it is free; return whether this process holds it."""
        if self._lock_file is not None:
            return True
        handle = open(self.lock_path, "a")  # held for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def _run(self) -> None:
        while True:
            if not self.exclusive or self.holds_lock():
                try:
                    self.poll()
                except Exception:  # a failed poll must not end the loop
                    log.exception("background poll failed")
            self._first_poll.set()
            time.sleep(self.interval)


def backend_poll(base_url: str, loaded_models: Callable[[], list[dict[str, Any]]],
                 up_gauge: Gauge) -> Callable[[], None]:
    """Return one poll: GPU readings (where NVML is), loaded models, backend up or down."""
    tracker = ResidencyTracker(base_url)
    nvml: list[Any] = []  # loaded on the first poll, in the polling worker only

    def poll() -> None:
        if not nvml:
            nvml.append(load_nvml())
        if nvml[0] is not None:
            record_gpus(read_gpus(nvml[0]))
        try:
            models = loaded_models()
        except Exception as exc:  # a down backend is a reading, not a failure
            log.info("backend %s did not answer /api/ps: %s", base_url, exc)
            up_gauge.labels(base_url).set(0)
            return
        up_gauge.labels(base_url).set(1)
        tracker.record(models)

    return poll
