"""What the machine is: CPU, memory, GPU, load and the software versions."""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import rasterio
import torch

from efficiency.settings import load_average


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(load_average(), 2),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "dask": version("distributed"),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "reattn_batch": version("reattn-batch"),
    }
