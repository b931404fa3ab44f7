"""Power measurement and per-execution energy attribution for adaptd.

Public API (see ``meter.py`` for the contract): ``PowerConfig``, ``EnergyMeter``,
``EnergyReading``, ``PowerSourceUnavailable``, ``PowerProfile``. One module per source:
``ina3221`` (Jetson iio), ``hwmon`` (Jetson JetPack 5+), ``rapl`` (Linux powercap), ``nvml``
(NVIDIA discrete GPUs, optional dependency), ``estimated`` (power profile applied to CPU/wall
time). ``testing`` builds fake sysfs trees for tests and benchmarks.
"""
from .config import PowerConfig
from .detect import PowerSourceUnavailable
from .estimated import PowerProfile
from .meter import EnergyMeter, EnergyReading

__all__ = ["PowerConfig", "EnergyMeter", "EnergyReading", "PowerSourceUnavailable", "PowerProfile"]
