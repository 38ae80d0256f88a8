"""What a bench ran on: kernel, CPU model, cores, AMX/AVX-512, frequency scaling."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_facts() -> dict:
    """The facts every bench reports with its figures."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if "model name" in line),
        platform.processor() or "unknown",
    )
    flags = set(next((line for line in lines if line.startswith("flags")), "").split())
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return {
        "kernel": platform.release(),
        "cpu": model,
        "cores": os.cpu_count(),
        "amx": any(flag.startswith("amx") for flag in flags),
        "avx512": any(flag.startswith("avx512") for flag in flags),
        "scaling_governor": governor.read_text().strip() if governor.exists() else "not exposed",
    }
