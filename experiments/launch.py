"""Launch the trainer on the fleet for one cell: place ranks, start them over SSH, collect rank 0.

Every rank records its PID in a file on its host before it becomes the trainer, so a controller
that is interrupted stops exactly the processes it started.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import PurePosixPath

from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from inventory.ship import ship_code
from inventory.ssh import FleetSSH, HostResult
from trainer.config import TrainerConfig

TRAINER_CODE = ("trainer/*.py", "inventory/__init__.py", "inventory/errors.py")
_RECORD_PID_THEN_EXEC = 'echo $$ > "$0"; exec "$@"'
_KILL_RECORDED = 'if [ -f "$0" ]; then kill -TERM "$(cat "$0")" 2>/dev/null; rm -f "$0"; fi; true'


@dataclass
class LaunchResult:
    """What one launch gave: rank 0's summary if it finished, else why not."""

    ok: bool
    summary: dict | None
    reason: str | None
    placement: dict[int, str]
    seconds: float


def place_ranks(config: TrainerConfig, fleet: Fleet) -> list[Host]:
    """Rank r runs on host r (one rank per host); rank 0 is stage 0 of pipeline 0."""
    if config.world_size > len(fleet.hosts):
        raise ConfigError(
            str(fleet.source),
            "hosts",
            f"a cell needs {config.world_size} hosts (pipeline {config.pipeline} × "
            f"data {config.data}) but the inventory has {len(fleet.hosts)}",
        )
    return fleet.hosts[: config.world_size]


def trainer_flags(config: TrainerConfig) -> list[str]:
    """The `python -m trainer` flags that reproduce `config` (out and iface excluded)."""
    flags = []
    for name, value in config.model_dump(exclude={"out", "iface"}, exclude_none=True).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


class TrainerLauncher:
    """Runs trainer cells on a fleet through one SSH session; ships the trainer code once."""

    def __init__(self, fleet: Fleet, ssh: FleetSSH):
        self.fleet = fleet
        self.ssh = ssh
        self.code = ship_code(ssh, fleet, TRAINER_CODE, "wanlab-trainer")

    def _pid_file(self, host: Host) -> str:
        return str(PurePosixPath(host.workdir) / "trainer-rank.pid")

    def run(self, config: TrainerConfig, run_name: str, timeout_s: float) -> LaunchResult:
        """Start every rank, wait for all of them, and return rank 0's summary."""
        hosts = place_ranks(config, self.fleet)
        rank_of_host = {host.name: rank for rank, host in enumerate(hosts)}
        port = random.randint(20000, 40000)
        flags = trainer_flags(config)

        def argv(host: Host) -> list[str]:
            rank = rank_of_host[host.name]
            out = str(PurePosixPath(host.workdir) / "cells" / run_name / f"rank{rank}")
            env = [
                f"RANK={rank}",
                f"WORLD_SIZE={config.world_size}",
                f"MASTER_ADDR={hosts[0].address}",
                f"MASTER_PORT={port}",
                "LOCAL_WORLD_SIZE=1",
                f"PYTHONPATH={self.code[host.name]}",
            ]
            iface = ["--iface", host.interface] if host.interface else []
            trainer = [host.python, "-m", "trainer", *flags, "--out", out, *iface]
            return ["env", *env, "sh", "-c", _RECORD_PID_THEN_EXEC, self._pid_file(host), *trainer]

        results = self.ssh.run(argv, timeout=timeout_s, hosts=rank_of_host)
        placement = {rank: host.name for rank, host in enumerate(hosts)}
        seconds = max(result.seconds for result in results.values())
        summary = _summary(results[hosts[0].name])
        if summary is not None and all(r.ok for r in results.values()):
            return LaunchResult(True, summary, None, placement, seconds)
        return LaunchResult(False, None, _failure(results, rank_of_host), placement, seconds)

    def stop_all(self, ssh: FleetSSH | None = None) -> None:
        """Stop every rank this launcher may have started, by the PID each one recorded."""
        (ssh or self.ssh).run(lambda h: ["sh", "-c", _KILL_RECORDED, self._pid_file(h)], timeout=15)


def _summary(result: HostResult) -> dict | None:
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _failure(results: dict[str, HostResult], rank_of_host: dict[str, int]) -> str:
    """The clearest reason: the first rank (by rank) that failed, with its last words."""
    failed = sorted((r for r in results.values() if not r.ok), key=lambda r: rank_of_host[r.host])
    if not failed:
        return "rank 0 printed no summary"
    first = failed[0]
    words = first.error or (first.stderr.strip().splitlines() or [f"exit {first.exit_code}"])[-1]
    others = f" ({len(failed) - 1} more rank(s) failed)" if len(failed) > 1 else ""
    return f"rank {rank_of_host[first.host]} on {first.host}: {words}{others}"
