"""A trial process's CPU, memory and GPU use, sampled once per epoch (`--system-metrics`).

Sampled in the trial process itself and reported with the epoch's metrics, so it reaches MLflow through
the search's tracking like everything else (worker nodes need no route to the tracking server). Needs
psutil; GPU figures need nvidia-ml-py (pynvml) too. Without them it says so once and reports nothing.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class SystemMetrics:
    def __init__(self, device: torch.device):
        try:
            import psutil
        except ImportError:
            log.warning("--system-metrics: psutil is not installed (pip install psutil); no system metrics")
            self.process = None
            return
        self.psutil, self.process = psutil, psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the interval
        self.gpu = self._gpu(device) if device.type == "cuda" else None

    @staticmethod
    def _gpu(device: torch.device):
        try:
            import pynvml
            pynvml.nvmlInit()
            return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception as e:  # noqa: BLE001 - ImportError, or NVML missing from the driver
            log.warning("--system-metrics: no GPU metrics (%s); pip install nvidia-ml-py", e)
            return None

    def sample(self) -> dict[str, float]:
        """CPU use of this process since the last sample (percent of one core), its resident memory (MB), the
        machine's memory in use (percent), and the GPU's utilisation (percent) and memory in use (MB)."""
        if self.process is None:
            return {}
        out = {"sys_cpu_percent": self.process.cpu_percent(None),
               "sys_rss_mb": self.process.memory_info().rss / 2**20,
               "sys_memory_percent": self.psutil.virtual_memory().percent}
        if self.gpu is not None:
            nvml, handle = self.gpu
            out["sys_gpu_util_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            out["sys_gpu_memory_mb"] = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        return out
