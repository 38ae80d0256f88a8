"""Each rank of a workload's cell gets the environment torchrun gives its workers: a stdlib
script printing its environment, started by torchrun itself (the reference) and placed by
wanlab (`experiments.workload.ranks`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.workload.ranks import processes
from experiments.workload.spec import Workload, WorkloadSpec
from inventory.models import Host

ENV_SCRIPT = (
    "import json, os\n"
    "keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK',\n"
    "        'GROUP_WORLD_SIZE', 'ROLE_RANK', 'ROLE_WORLD_SIZE', 'ROLE_NAME', 'MASTER_ADDR']\n"
    "print(json.dumps({k: os.environ.get(k) for k in keys}))\n"
)


def torchrun_env(tmp_path: Path, nnodes: int, nproc: int) -> list[dict]:
    """Each worker's environment as torchrun sets it (static rendezvous on loopback)."""
    script = tmp_path / "env.py"
    script.write_text(ENV_SCRIPT)
    port = 29600 + os.getpid() % 300
    runs = []
    for node in range(nnodes):
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
                "--node-rank", str(node), "--nproc-per-node", str(nproc),
                "--master-addr", "127.0.0.1", "--master-port", str(port),
                "--log-dir", str(tmp_path / f"logs{node}"), "--tee", "1", str(script)]  # fmt: skip
        runs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        )
    found = []
    for run in runs:
        out, _ = run.communicate(timeout=120)
        found += [json.loads(line.split(":", 1)[1]) for line in out.splitlines() if "{" in line]
    return sorted(found, key=lambda env: int(env["RANK"]))


@pytest.mark.parametrize("nnodes, nproc", [(1, 2), (2, 1)])
def test_each_rank_gets_the_environment_torchrun_gives(tmp_path, nnodes, nproc):
    reference = torchrun_env(tmp_path, nnodes, nproc)
    hosts = [Host(name=f"h{n}", address="127.0.0.1", slots=nproc) for n in range(nnodes)]
    placed = [host for host in hosts for _ in range(nproc)]
    workload = WorkloadSpec("env", Workload(command=["{python}"], timing="jsonl", iterations=2), {})
    ready = {h.name: {"port": 1, "cpus": 2, "boot_id": "one machine"} for h in hosts}
    cell = {"profile": "default", "tcp": "host", "dp_degree": nnodes * nproc, "micro_batch": 1,
            "repeat": 0, "world_size": nnodes * nproc, "cell_id": "c", "run": "r"}  # fmt: skip
    ours = [p.env for p in processes(workload, cell, placed, ready, "r")]
    assert len(ours) == len(reference) == nnodes * nproc
    for theirs, mine in zip(reference, ours, strict=True):
        assert {k: mine.get(k) for k in theirs} == theirs
