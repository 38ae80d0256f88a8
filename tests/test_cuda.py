"""The CUDA path: on a GPU (NCCL process group, device placement, autocast) the trainer computes
what it computes on the CPU.

Skipped where torch sees no CUDA device, as on CI. On a GPU machine run it without the fleet
fixtures: `python3 -m pytest --noconftest tests/test_cuda.py`. One rank per process group: NCCL
refuses two ranks on one GPU, so the pipeline's partition is checked on the CPU
(tests/test_trainer.py) and here the whole model runs as one stage.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(device: str, dtype: str = "fp32", model: str = "tiny", **flags) -> dict:
    """Rank 0's summary of a one-rank run."""
    argv = [sys.executable, "-m", "trainer", "--model", model, "--device", device,
            "--dtype", dtype, "--pipeline", "1", "--batch", "4", "--iterations", "4",
            "--warmup", "1", "--optimizer", "sgd", "--lr", "0.1"]  # fmt: skip
    for name, value in flags.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    env = os.environ | {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fp32_on_the_gpu_matches_the_cpu():
    cpu, gpu = train("cpu"), train("cuda")
    assert gpu["backend"] == "nccl" and cpu["backend"] == "gloo"
    assert gpu["device"] == torch.cuda.get_device_name(0)
    assert gpu["losses"] == pytest.approx(cpu["losses"], rel=1e-4)
    assert gpu["losses"][-1] < gpu["losses"][0]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_follows_fp32(dtype):
    reference, mixed = train("cuda"), train("cuda", dtype)
    assert all(torch.isfinite(torch.tensor(mixed["losses"])))
    assert mixed["losses"] == pytest.approx(reference["losses"], rel=0.05)
    assert mixed["losses"][-1] < mixed["losses"][0]
