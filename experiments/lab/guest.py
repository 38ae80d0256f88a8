"""Kernel-in-the-loop: run a command inside the lab's user-mode Linux kernel (it has sch_netem).

The guest boots on the host's own files (hostfs root), so the command sees this checkout and
this Python; it gets a private /run, the network modules loaded, and it writes its results to
files under a host directory. The guest always halts, also when the command fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from experiments.lab.kernel import (
    MODULE_FAILED,
    Kernel,
    boot_argv,
    current,
    init_prelude,
    run_bounded,
)
from inventory.safewrite import write_file

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class UmlRun:
    """How the guest command ended: its exit status (None if it never finished) and output."""

    returncode: int | None
    output: str
    console: str


def _init_script(kernel: Kernel, workdir: Path, argv: list[str], env: dict[str, str]) -> str:
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    return f"""{init_prelude(kernel, workdir)}{exports}
cd {shlex.quote(str(_PACKAGE_ROOT))}
{shlex.join(argv)} > {workdir}/output.log 2>&1 &
pid=$!
wait $pid
echo $? > {workdir}/returncode
halt -f
"""


def run(
    argv: list[str],
    timeout_s: float = 300,
    mem: str = "1G",
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> UmlRun:
    """Boot the lab's kernel, run `argv` as root inside it, halt; `workdir` (host path) holds
    its files. Raises KernelError when no kernel is chosen for this machine."""
    kernel = current()
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="wanlab-uml-")) if owned else Path(workdir)
    try:
        init = workdir / "init.sh"
        write_file(init, _init_script(kernel, workdir, argv, env or {}), None, mode=0o755)
        umid = f"wanlab-{os.getpid()}-{workdir.name[-8:]}"
        console = run_bounded(boot_argv(kernel.binary, init, umid, workdir, mem), timeout_s)
        rc_file, out_file = workdir / "returncode", workdir / "output.log"
        returncode = int(rc_file.read_text()) if rc_file.exists() else None
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
        failed = workdir / MODULE_FAILED
        if failed.exists():
            output += f"\nmodule did not load: {failed.read_text().strip()}"
        return UmlRun(returncode=returncode, output=output, console=console)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
