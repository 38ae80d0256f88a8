"""Kernel-in-the-loop: run a command inside a user-mode Linux kernel that has sch_netem.

The guest boots on the host's own files (hostfs root), so the command sees this checkout and
this Python; it gets a private /run, the network modules loaded, and it writes its results to
files under a host directory. The guest always halts, also when the command fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

UML_BINARY = "linux.uml"
MODULE_ROOT = Path("/usr/lib/uml/modules")
MODULES = (
    "drivers/net/veth.ko",
    "lib/crc-ccitt.ko",
    "net/ipv6/ipv6.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
    "net/sched/sch_netem.ko",
    "net/sched/sch_htb.ko",
    "net/sched/sch_tbf.ko",
    "net/sched/cls_u32.ko",
)
"""Load order matters: ipv6 needs crc-ccitt, the bridge needs llc and stp."""

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class UmlUnavailable(RuntimeError):
    """user-mode Linux or its modules are not installed."""


@dataclass(frozen=True)
class UmlRun:
    """How the guest command ended: its exit status (None if it never finished) and output."""

    returncode: int | None
    output: str
    console: str


def module_dir() -> Path:
    """The directory of the UML kernel's modules (the one version installed)."""
    versions = sorted(MODULE_ROOT.glob("*/kernel")) if MODULE_ROOT.exists() else []
    if not shutil.which(UML_BINARY) or not versions:
        raise UmlUnavailable(
            "user-mode Linux is not installed: apt-get install user-mode-linux kmod"
        )
    return versions[-1]


def available() -> bool:
    """True when the UML kernel and its modules are installed."""
    try:
        module_dir()
    except UmlUnavailable:
        return False
    return True


def _init_script(workdir: Path, argv: list[str], env: dict[str, str]) -> str:
    modules = " ".join(str(module_dir() / m) for m in MODULES)
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin:/usr/bin:/sbin:/bin"])
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    return f"""#!/bin/sh
export PATH={shlex.quote(path)}
export HOME={shlex.quote(str(workdir))}
export PYTHONPATH={shlex.quote(str(_PACKAGE_ROOT))}
{exports}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 run /run
for m in {modules}; do insmod "$m"; done
ip link set lo up
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
    """Boot the guest, run `argv` as root inside it, halt; `workdir` (host path) holds its files."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="wanlab-uml-")) if owned else Path(workdir)
    try:
        init = workdir / "init.sh"
        init.write_text(_init_script(workdir, argv, env or {}))
        init.chmod(0o755)
        uml = [
            UML_BINARY,
            f"mem={mem}",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={init}",
            "con=null",
            "con0=fd:0,fd:1",
            f"umid=wanlab-{os.getpid()}-{workdir.name[-8:]}",
            f"uml_dir={workdir}",
            "quiet",
        ]
        proc = subprocess.Popen(
            uml,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            console, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            console = proc.communicate()[0] + f"\nuser-mode Linux did not halt in {timeout_s} s"
        rc_file, out_file = workdir / "returncode", workdir / "output.log"
        returncode = int(rc_file.read_text()) if rc_file.exists() else None
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
        return UmlRun(returncode=returncode, output=output, console=console)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
