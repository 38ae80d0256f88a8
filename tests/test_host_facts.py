"""What the host-facts script makes of a GPU driver's answers.

This machine has no GPU: the parsers are fed a driver's output as `nvidia-smi` prints it (a
stand-in for the real command, which cannot run here); on the local fleet the script itself runs
and must report no GPU, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from inventory import host_facts

QUERY_OUTPUT = """NVIDIA H100 80GB HBM3, 81559, 550.54.15
NVIDIA H100 80GB HBM3, 81559, 550.54.15
"""
BANNER = """+-------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15            Driver Version: 550.54.15      CUDA Version: 12.4     |
"""


def test_the_driver_s_gpu_list_and_cuda_version_are_read():
    gpus = host_facts.parse_gpu_query(QUERY_OUTPUT)
    assert (
        gpus == [{"model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "driver": "550.54.15"}] * 2
    )
    assert (
        host_facts.parse_gpu_query("Tesla V100-SXM2-16GB, 16160, 470.57.02\n")[0]["memory_mib"]
        == 16160
    )
    assert host_facts.parse_cuda_version(BANNER) == "12.4"
    assert host_facts.parse_cuda_version("no banner") is None


def test_a_host_without_a_driver_reports_no_gpu_and_why():
    script = Path(host_facts.__file__)
    facts = subprocess.run([sys.executable, str(script), "127.0.0.1", "lo"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    gpu = json.loads(facts)["gpu"]
    assert gpu == {"count": 0, "why": "no nvidia-smi on the host"}
