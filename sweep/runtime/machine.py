"""The machine a run trained and was scored on, in words (a run's costs are this machine's)."""

from __future__ import annotations

import os
from pathlib import Path


def describe() -> str:
    """The GPU's name, else `<cores> cores of <CPU model>`, with torch's version."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")
    return f"{len(os.sched_getaffinity(0))} cores of {cpu}, torch {torch.__version__}"
