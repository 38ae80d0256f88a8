"""Trainer runs on a local fleet of our own, for the benches that compare engines and sync schemes.

The fleet is N network namespaces with sshd on a bridge of this kernel; a rate-only profile
(this kernel has HTB and TBF but not netem) is applied to every host's egress through the netem
agent over SSH; one `python -m trainer` rank runs in each host's namespace, with gloo on the
host's `eth0`. Everything the fleet made is removed on exit, shaping first.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.lab.fleet import LocalFleet
from experiments.localranks import REPO, finish
from inventory.loader import load_inventory
from netem.fleet import FleetNetem, load_target

PREFIX = "wle"
SUBNET = "198.18.10.0/24"
LEASE_S = 3600.0
FIRST_PORT = 29600


class FleetBench:
    """A local fleet of `n_hosts`, shaped on demand, that runs one trainer rank per host."""

    def __init__(self, n_hosts: int, prefix: str = PREFIX, subnet: str = SUBNET):
        self.n_hosts, self.prefix, self.subnet = n_hosts, prefix, subnet
        self.port = FIRST_PORT
        self.profile = "default"
        self.failures: list[dict] = []

    def __enter__(self) -> FleetBench:
        # A terminated bench still takes its fleet down (SIGINT may be ignored in the background).
        self.previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.home = Path(tempfile.mkdtemp(prefix="wanlab-bench-fleet-"))
        self.local = LocalFleet(self.prefix, self.subnet, self.home)
        self.netem = None
        try:
            self.fleet = load_inventory(self.local.up(self.n_hosts))
            self.netem = FleetNetem(self.fleet).__enter__()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self.netem is not None:
                self.netem.reset()
                self.netem.__exit__(None, None, None)
        finally:
            self.local.down()
            shutil.rmtree(self.home, ignore_errors=True)
            signal.signal(signal.SIGTERM, self.previous_sigterm)

    def shape(self, profile: str) -> None:
        """Apply `profile` (a rate-only profile name or short form) to every host's egress."""
        answers = self.netem.apply(load_target(profile), lease_s=LEASE_S)
        failed = {name: a for name, a in answers.items() if not a["ok"]}
        if failed:
            raise RuntimeError(f"applying {profile!r} failed: {failed}")
        self.profile = profile

    def train(self, flags: list[str], timeout: float = 600.0, n_ranks: int | None = None) -> dict:
        """`python -m trainer FLAGS` with one rank on each of the first `n_ranks` hosts (all by
        default); rank 0's summary. A failed run is tried once more; both failures raise.

        Failed attempts are kept in `self.failures` (profile, flags, every rank's stderr tail).
        """
        for attempt in range(2):
            results = self._launch(flags, timeout, n_ranks or self.n_hosts)
            if all(code == 0 for code, _, _ in results):
                return json.loads(results[0][1].strip().splitlines()[-1])
            report = "\n".join(
                f"rank {rank} exited {code}: {err[-1500:]}"
                for rank, (code, _, err) in enumerate(results)
            )
            self.failures.append({"profile": self.profile, "flags": flags, "ranks": report})
            print(f"  run failed (attempt {attempt + 1}):\n{report}", file=sys.stderr, flush=True)
        raise RuntimeError(f"a run under {self.profile} failed twice:\n{report}")

    def _launch(self, flags: list[str], timeout: float, n_ranks: int) -> list:
        self.port += 1
        master = self.local.host(0).address
        procs = []
        for rank in range(n_ranks):
            env = {"RANK": rank, "WORLD_SIZE": n_ranks, "MASTER_ADDR": master,
                   "MASTER_PORT": self.port, "PYTHONPATH": REPO}  # fmt: skip
            argv = ["ip", "netns", "exec", self.local.host(rank).netns, "env"]
            argv += [f"{key}={value}" for key, value in env.items()]
            argv += [sys.executable, "-m", "trainer", "--iface", "eth0", *flags]
            procs.append(
                subprocess.Popen(
                    argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )  # fmt: skip
            )
        return finish(procs, timeout)


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signum)
