"""NVIDIA discrete GPUs through NVML (``nvidia-ml-py``, imported only if installed).

Per GPU i a rail ``gpu<i>`` (role ``gpu``): where the driver supports
``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load; Volta and newer) the rail is a
``counter`` and is differenced directly; otherwise it is a ``power`` rail sampled with
``nvmlDeviceGetPowerUsage`` (mW; the driver refreshes it every few tens of ms, so short
executions see a smoothed value). Jetson boards have no NVML.

Contract: see ``source.PowerSource``. ``discover`` initialises and shuts NVML down again in the
calling process; ``open`` initialises it in the sampler process. Any NVML error on a read marks
that rail NaN for the sample.
"""
from __future__ import annotations

import importlib

import numpy as np

from .source import PowerSource, Rail

SENSOR = "nvml"


def _import_nvml():
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class NvmlSource(PowerSource):
    sensor = SENSOR
    spec_key = "devices"

    def __init__(self, devices: list[dict]) -> None:
        # device: {"index": int, "counter": bool}
        self._devices = devices
        self._rails = tuple(
            Rail(f"gpu{d['index']}", SENSOR, "gpu", "counter" if d["counter"] else "power") for d in devices
        )
        self._nvml = None
        self._handles: list = []
        self._base_mj: list[float | None] = []

    def open(self) -> None:
        nvml = _import_nvml()
        if nvml is None:
            raise RuntimeError("nvidia-ml-py (pynvml) is not installed")
        nvml.nvmlInit()
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(d["index"]) for d in self._devices]
        self._base_mj = [None] * len(self._handles)

    def read(self, out: np.ndarray) -> None:
        nvml = self._nvml
        for i, (h, d) in enumerate(zip(self._handles, self._devices)):
            try:
                if d["counter"]:
                    mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(h))
                    if self._base_mj[i] is None:
                        self._base_mj[i] = mj
                    out[i] = mj - self._base_mj[i]
                else:
                    out[i] = float(nvml.nvmlDeviceGetPowerUsage(h))
            except Exception:  # NVMLError and its many subclasses
                out[i] = np.nan

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


def discover(root: str = "/") -> tuple[NvmlSource | None, str]:
    nvml = _import_nvml()
    if nvml is None:
        return None, "nvidia-ml-py not installed (pip install 'adaptd[nvml]')"
    try:
        nvml.nvmlInit()
    except Exception as e:
        return None, f"nvmlInit failed: {e}"
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                counter = True
            except Exception:
                try:
                    nvml.nvmlDeviceGetPowerUsage(h)
                except Exception:
                    continue
                counter = False
            devices.append({"index": i, "counter": counter})
    except Exception as e:
        return None, f"NVML query failed: {e}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    if not devices:
        return None, "NVML found no GPU reporting energy or power"
    return NvmlSource(devices), ""
