"""Each process of a workload's cell: its host, ranks, environment and argv, as torchrun gives them.

torchrun's worker environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
GROUP_WORLD_SIZE, ROLE_RANK, ROLE_WORLD_SIZE, ROLE_NAME, MASTER_ADDR, MASTER_PORT) plus NODE_RANK
(Lightning reads it), the interface gloo and NCCL are told, and OMP_NUM_THREADS: the CPUs of the
machine shared by the cell's processes on it (hosts with one kernel boot id are one machine).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

from experiments.workload.spec import WorkloadSpec
from experiments.workload.template import render
from inventory.errors import ConfigError
from inventory.models import Host


@dataclass(frozen=True)
class Process:
    """One rank of a workload's cell, ready to start on its host."""

    rank: int
    host: Host
    argv: list[str]
    env: dict[str, str]
    """wanlab's variables, then the workload's `env`."""
    cwd: str
    out: str
    timing: dict | None
    """The parser the job host runs on this process's output (the timing rank only)."""

    def request(self) -> dict:
        """The job host's description of this process."""
        return {"rank": self.rank, "argv": self.argv, "env": self.env, "cwd": self.cwd,
                "out": self.out, "timing": self.timing}  # fmt: skip


def workload_python(workload: WorkloadSpec, host: Host) -> str:
    """The workload's interpreter on `host`."""
    python = workload.table.python
    return host.python if python is None else render(python, host_values(workload, host, ""))


def workdir(workload: WorkloadSpec, host: Host) -> str:
    """The workload's working folder on `host` (relative templates under the host's workdir)."""
    values = host_values(workload, host, host.python)
    folder = render(workload.table.workdir, values)
    return folder if os.path.isabs(folder) else str(PurePosixPath(host.workdir) / folder)


def host_values(workload: WorkloadSpec, host: Host, python: str) -> dict[str, object]:
    """The host-scope template variables."""
    table = workload.table
    return {"host": host.name, "address": host.address, "slots": host.slots, "python": python,
            "workdir": host.workdir, "workload": workload.name, "iterations": table.iterations,
            "warmup": table.warmup}  # fmt: skip


def processes(
    workload: WorkloadSpec,
    cell_values: dict[str, object],
    hosts: list[Host],
    ready: dict[str, dict],
    run_name: str,
) -> list[Process]:
    """Every process of a cell whose rank r runs on `hosts[r]` (a host's ranks together);
    `ready` is each host's job host's answer (port, CPUs, boot id)."""
    nodes = list(dict.fromkeys(host.name for host in hosts))
    per_host = Counter(host.name for host in hosts)
    per_machine = Counter()
    for host in hosts:
        per_machine[ready[host.name].get("boot_id") or host.name] += 1
    master = hosts[0]
    table = workload.table
    seen: Counter = Counter()
    made = []
    for rank, host in enumerate(hosts):
        local = seen[host.name]
        seen[host.name] += 1
        facts = ready[host.name]
        machine = facts.get("boot_id") or host.name
        threads = table.threads or max(1, (facts.get("cpus") or 1) // per_machine[machine])
        folder = workdir(workload, host)
        python = workload_python(workload, host)
        out = str(PurePosixPath(host.workdir) / "cells" / run_name / f"rank{rank}")
        iface = host.interface or facts.get("interface") or ""
        values = {
            **host_values(workload, host, python), **cell_values, "workdir": folder,
            "nnodes": len(nodes), "master_addr": master.address,
            "master_port": ready[master.name]["port"], "rank": rank, "local_rank": local,
            "node_rank": nodes.index(host.name), "local_world_size": per_host[host.name],
            "interface": iface, "threads": threads, "out": out,
        }  # fmt: skip
        env = {
            "MASTER_ADDR": master.address, "MASTER_PORT": str(values["master_port"]),
            "RANK": str(rank), "ROLE_RANK": str(rank), "ROLE_NAME": "default",
            "LOCAL_RANK": str(local), "WORLD_SIZE": str(len(hosts)),
            "ROLE_WORLD_SIZE": str(len(hosts)), "LOCAL_WORLD_SIZE": str(per_host[host.name]),
            "NODE_RANK": str(values["node_rank"]), "GROUP_RANK": str(values["node_rank"]),
            "GROUP_WORLD_SIZE": str(len(nodes)), "OMP_NUM_THREADS": str(threads),
        }  # fmt: skip
        if iface:
            env |= {"GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface}
        env |= {name: render(value, values) for name, value in table.env.items()}
        timing = None
        if rank == table.timing_rank:
            timing = {"kind": table.timing, "pattern": table.pattern,
                      "iterations": table.iterations}  # fmt: skip
        argv = [render(word, values) for word in table.command]
        made.append(Process(rank, host, argv, env, folder, out, timing))
    return made


def check_together(hosts: list[Host], source: str) -> None:
    """Refuse a placement that splits a host's ranks (launchers take RANK = the node's first
    rank + LOCAL_RANK)."""
    first: dict[str, int] = {}
    for rank, host in enumerate(hosts):
        if host.name in first and hosts[rank - 1].name != host.name:
            raise ConfigError(source, "placement", f"a workload needs {host.name}'s ranks "
                              f"together (ranks {first[host.name]} and {rank})")  # fmt: skip
        first.setdefault(host.name, rank)
