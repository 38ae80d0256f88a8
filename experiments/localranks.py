"""Start every rank of a run as `python -m trainer` processes on this machine (127.0.0.1), for
the tests and benches that run a trainer without a fleet (the controller side: it never ships
to hosts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(
    world_size: int, flags: list[str], env: dict[str, str] | None = None, port: int | None = None
) -> list[subprocess.Popen]:
    """One `python -m trainer FLAGS` per rank, master on 127.0.0.1; stdout/stderr piped."""
    port = port or free_port()
    procs = []
    for rank in range(world_size):
        rank_env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "trainer", *flags],
                cwd=REPO,
                env=rank_env | (env or {}),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) per process; a process still running at `timeout` is killed."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results
