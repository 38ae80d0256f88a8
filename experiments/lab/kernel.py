"""The user-mode Linux kernel the lab boots: the recorded choice, and how a guest boots it.

`kernel.json` in the kernel folder records the choice (kernelfetch.py makes it): the kernel, its
version, the package's checksum, why it was chosen and what each candidate's probe boot said.
Every guest (the delay node, a test's kernel-in-the-loop run) boots the recorded kernel with
the same command line and init prelude, which loads every module the lab needs.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from inventory.environment import folder_from
from inventory.errors import ConfigError, config_error
from inventory.tomlfile import read_json

LAB_MODULES = (
    "veth",
    "ifb",
    "bridge",
    "sch_ingress",
    "act_mirred",
    "sch_netem",
    "sch_htb",
    "sch_tbf",
    "cls_u32",
)
"""Every module the lab needs; each is loaded after its dependencies, as modules.dep lists them
(which differ between kernels: 6.1's bridge needs ipv6 and crc-ccitt, 7.2's does not)."""
MODULE_FAILED = "module-failed"
"""The file (in the guest's host folder) where the init prelude names a module that did not
load."""
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "run `wanlab fleet kernel` (install.sh does) to fetch and probe a kernel for this CPU"
REFRESH_HINT = "remove it or run `wanlab fleet kernel --refresh` to choose again"


class KernelError(RuntimeError):
    """No user-mode Linux kernel that boots here; the message says why and what to do."""


@dataclass(frozen=True)
class Kernel:
    """One user-mode Linux kernel: its binary, its modules, where it came from."""

    binary: str
    modules: str  # the modules' version folder, which holds modules.dep
    version: str
    origin: str  # "fetched" or "packaged"
    package: str  # e.g. "user-mode-linux 7.2um1 (Debian sid)"
    sha256: str  # of the package file when fetched, of the binary when packaged

    def load_order(self) -> list[Path]:
        """The module files to insmod, dependencies first, for every module in LAB_MODULES
        that is not built in. KernelError names a module the kernel has neither way."""
        return module_load_order(Path(self.modules), LAB_MODULES)


def module_load_order(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Module files under a kernel's modules `folder` that load `names`, dependencies first
    (modprobe's order: the last dependency modules.dep lists is loaded first)."""
    try:
        dep_lines = (folder / "modules.dep").read_text().splitlines()
        builtin_text = (
            (folder / "modules.builtin").read_text()
            if (folder / "modules.builtin").exists()
            else ""
        )
    except OSError as error:
        raise KernelError(f"cannot read the kernel's module list: {error}") from None
    depends = {}
    for line in dep_lines:
        module, _, needs = line.partition(":")
        depends[_module_name(module)] = (module, needs.split())
    builtin = {_module_name(line) for line in builtin_text.split()}
    order: list[str] = []
    for name in names:
        if name in builtin:
            continue
        if name not in depends:
            raise KernelError(
                f"the kernel in {folder} has no module {name} (neither loadable nor built in)"
            )
        module, needs = depends[name]
        for path in [*reversed(needs), module]:
            if path not in order:
                order.append(path)
    return [folder / path for path in order]


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def kernel_dir() -> Path:
    """wanlab's kernel folder: $WANLAB_KERNEL_DIR, else /var/lib/wanlab/kernel (machine-wide,
    so every fleet, test session and state folder of this machine shares it)."""
    return folder_from("WANLAB_KERNEL_DIR", Path("/var/lib/wanlab/kernel"))


def record_path() -> Path:
    """The record of the kernel the lab uses."""
    return kernel_dir() / "kernel.json"


def cpu_facts() -> dict:
    """The CPU model and whether it has AMX or AVX-512 (what decides which UML kernels boot)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "model": model,
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "avx512": any(f.startswith("avx512") for f in flags),
    }


# -- using the recorded kernel ----------------------------------------------------------------
class KernelRecord(BaseModel):
    """What kernel.json holds (`choose`): the choice, why, and every candidate's probe."""

    model_config = ConfigDict(extra="allow")
    kernel: Kernel
    reason: str
    probes: list[dict]


def load_record() -> dict | None:
    """The recorded choice, or None when none was made; KernelError naming kernel.json when
    what is there is not a record (a FIFO, a list, a damaged file)."""
    path = record_path()
    if not os.path.lexists(path):
        return None
    try:
        record = read_json(path)
        KernelRecord.model_validate(record)
    except ConfigError as error:
        raise KernelError(f"{error}; {REFRESH_HINT}") from None
    except ValidationError as error:
        raise KernelError(f"{config_error(error, str(path))}; {REFRESH_HINT}") from None
    return record


def current() -> Kernel:
    """The kernel the lab boots: the recorded choice, checked to be still in place."""
    record = load_record()
    if record is None:
        raise KernelError(
            f"no user-mode Linux kernel has been chosen for this machine: {SETUP_HINT}"
        )
    kernel = Kernel(**record["kernel"])
    if not os.path.isfile(kernel.binary) or not os.path.isdir(kernel.modules):
        raise KernelError(
            f"the recorded kernel {kernel.package} is gone ({kernel.binary}): {SETUP_HINT}"
        )
    return kernel


def available() -> bool:
    """True when a probed kernel is recorded and still in place."""
    try:
        current()
    except KernelError:
        return False
    return True


def describe() -> dict:
    """What `fleet status` and `inventory check -i local` say: the kernel, its version, why."""
    record = load_record()
    if record is None:
        return {"kernel": None, "reason": f"none chosen yet: {SETUP_HINT}"}
    kernel = record["kernel"]
    return {
        "kernel": kernel["package"],
        "version": kernel["version"],
        "binary": kernel["binary"],
        "sha256": kernel["sha256"],
        "reason": record["reason"],
        "probes": record["probes"],
    }


# -- booting -------------------------------------------------------------------------------------
def boot_argv(binary: str, init: Path, umid: str, uml_dir: Path, mem: str) -> list[str]:
    """The command line that boots `binary` on the host's own files with `init` as PID 1."""
    return [
        binary,
        f"mem={mem}",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={init}",
        "con=null",
        "con0=fd:0,fd:1",
        f"umid={umid}",
        f"uml_dir={uml_dir}",
        "quiet",
    ]


def panic_line(console: str) -> str | None:
    """The line of a console log that says why the kernel died, if any."""
    markers = ("Kernel panic", "failed, errno", "Attempted to kill init", "BUG:", "Oops")
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    hits = [line for line in lines if any(m in line for m in markers)]
    if not hits:
        return None
    # The cause is usually the line before "Kernel panic"; give both when both are there.
    return " / ".join(dict.fromkeys(hits[:2]))


def init_prelude(kernel: Kernel, workdir: Path, n_ifbs: int = 2) -> str:
    """The shell lines every guest's init starts with: PATH and PYTHONPATH, /proc, /sys, a
    private /run, and every lab module; a module that does not load is named in
    WORKDIR/module-failed (with insmod's words) and the guest halts at once."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin:/usr/bin:/sbin:/bin"])
    loads = []
    for module_file in kernel.load_order():
        module = shlex.quote(str(module_file))
        options = f" numifbs={n_ifbs}" if module_file.name.startswith("ifb.ko") else ""
        failed = shlex.quote(str(workdir / MODULE_FAILED))
        on_failure = f"{{ echo {module} $(cat /run/insmod.err) > {failed}; halt -f; }}"
        loads.append(f"insmod {module}{options} 2>/run/insmod.err || {on_failure}")
    return f"""#!/bin/sh
export PATH={shlex.quote(path)}
export HOME={shlex.quote(str(workdir))}
export PYTHONPATH={shlex.quote(str(_PACKAGE_ROOT))}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 run /run
{chr(10).join(loads)}
ip link set lo up
"""


def run_bounded(argv: list[str], timeout_s: float) -> str:
    """Run a kernel to its end (or kill its process group after `timeout_s`); its console."""
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as error:
        return f"could not start {argv[0]}: {error}"
    try:
        return process.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0] + f"\ndid not halt within {timeout_s:g} s"
