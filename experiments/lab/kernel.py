"""The user-mode Linux kernel the lab boots: which one, where it lives, and proof that it boots.

Which UML kernel runs depends on the CPU: Debian 12's packaged 6.1 (and Debian 13's 6.12) panic
at boot where the CPU's XSAVE state outgrows their fixed FP save area (CPUs with AMX). So the
lab uses one kernel on every CPU: the newer `user-mode-linux` from Debian's unstable suite,
fetched with a private apt configuration into wanlab's own folder together with the C library
it needs (its interpreter and library path set there with patchelf); nothing of the system's
apt configuration or libraries is touched. Every candidate is proven by a probe boot that loads
the modules the lab needs; the packaged kernel is the fallback where the fetch fails.

`kernel.json` in the kernel folder records the choice: the kernel, its version, the package's
checksum, why it was chosen and what each candidate's probe boot said.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from inventory.environment import folder_from
from inventory.errors import ConfigError, config_error
from inventory.safewrite import write_file
from inventory.tomlfile import read_json

PACKAGED_BINARY = Path("/usr/bin/linux.uml")
PACKAGED_MODULES = Path("/usr/lib/uml/modules")
FETCH_SUITE = "sid"
FETCH_PACKAGES = ("user-mode-linux", "libc6")
ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
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
PROBE_TIMEOUT_S = 60.0
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


@dataclass(frozen=True)
class Probe:
    """What one probe boot of a candidate kernel showed."""

    origin: str
    package: str
    booted: bool
    seconds: float
    version: str | None
    detail: str  # the panic or failure line, or "booted; all lab modules loaded"


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


# -- probing ------------------------------------------------------------------------------------
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


def probe(candidate: Kernel) -> Probe:
    """Boot the candidate once: it must reach init, load every lab module (with the same init
    prelude every guest of the lab starts with) and report its release."""
    origin, package = candidate.origin, candidate.package
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wanlab-kprobe-") as scratch:
        work = Path(scratch)
        try:
            prelude = init_prelude(candidate, work)
        except KernelError as error:
            return Probe(origin, package, False, 0.0, None, str(error))
        init = work / "init.sh"
        init.write_text(f"{prelude}uname -r > {work}/release\nhalt -f\n")
        init.chmod(0o755)
        argv = boot_argv(candidate.binary, init, f"wanlab-kprobe-{os.getpid()}", work, "256M")
        console = run_bounded(argv, PROBE_TIMEOUT_S)
        release = (work / "release").read_text().strip() if (work / "release").exists() else None
        failed = work / MODULE_FAILED
        module_failure = failed.read_text().strip() if failed.exists() else None
    seconds = round(time.monotonic() - started, 2)
    if module_failure is not None:
        return Probe(origin, package, False, seconds, None, f"a module failed: {module_failure}")
    if release is None:
        detail = panic_line(console) or f"did not reach init; console ends: {console[-300:]!r}"
        return Probe(origin, package, False, seconds, None, detail)
    return Probe(origin, package, True, seconds, release, "booted; all lab modules loaded")


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


# -- candidates -----------------------------------------------------------------------------------
def packaged_candidate() -> Kernel | None:
    """The distribution's own `user-mode-linux`, if installed."""
    versions = sorted(PACKAGED_MODULES.glob("*/modules.dep")) if PACKAGED_MODULES.is_dir() else []
    if not PACKAGED_BINARY.is_file() or not versions:
        return None
    package_version = _dpkg_version("user-mode-linux") or "unknown"
    return Kernel(
        binary=str(PACKAGED_BINARY),
        modules=str(versions[-1].parent),
        version=versions[-1].parent.name,
        origin="packaged",
        package=f"user-mode-linux {package_version} (this system's package)",
        sha256=_sha256(PACKAGED_BINARY),
    )


def fetch(destination: Path) -> Kernel:
    """Download the unstable suite's `user-mode-linux` and `libc6` with a private apt
    configuration, unpack them under `destination` and point the kernel at that C library."""
    apt = destination / "apt"
    lists, cache, debs = apt / "lists", apt / "cache", apt / "debs"
    for folder in (lists / "partial", cache / "archives" / "partial", debs):
        folder.mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    write_file(sources, f"deb [signed-by={KEYRING}] {ARCHIVE} {FETCH_SUITE} main\n", None)
    options = [
        "-o",
        f"Dir::Etc::sourcelist={sources}",
        "-o",
        "Dir::Etc::sourceparts=-",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        f"Dir::Cache={cache}",
        "-o",
        "APT::Sandbox::User=root",
        "-qq",
    ]
    _checked(["apt-get", *options, "update"], "apt-get update (private sources list)")
    for old in debs.glob("*.deb"):
        old.unlink()
    wanted = [f"{name}/{FETCH_SUITE}" for name in FETCH_PACKAGES]
    _checked(["apt-get", *options, "download", *wanted], "apt-get download", cwd=debs)
    for scratch in (lists, cache):  # the suite's package lists: ~200 MB, needed no more
        shutil.rmtree(scratch, ignore_errors=True)
    files = {deb.name.split("_")[0]: deb for deb in debs.glob("*.deb")}
    uml_deb = files["user-mode-linux"]
    version = uml_deb.name.split("_")[1]
    root = destination / version
    if root.exists():
        shutil.rmtree(root)
    for deb in files.values():
        _checked(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    libdir = root / "usr/lib/x86_64-linux-gnu"
    binary = root / "linux.uml"
    shutil.copy2(root / "usr/bin/linux.uml", binary)
    _checked(
        [
            "patchelf",
            "--set-interpreter",
            str(libdir / "ld-linux-x86-64.so.2"),
            "--set-rpath",
            str(libdir),
            str(binary),
        ],
        "patchelf",
    )
    modules = sorted((root / "usr/lib/uml/modules").glob("*/modules.dep"))[-1].parent
    return Kernel(
        binary=str(binary),
        modules=str(modules),
        version=modules.name,
        origin="fetched",
        package=f"user-mode-linux {version} (Debian {FETCH_SUITE})",
        sha256=_sha256(uml_deb),
    )


def _checked(argv: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KernelError(f"{what} failed: {error}") from None
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise KernelError(f"{what} failed (exit {result.returncode}): {last[0]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dpkg_version(package: str) -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


# -- choosing -----------------------------------------------------------------------------------
def choose(fetched: Kernel | None, fetch_error: str | None, packaged: Kernel | None) -> dict:
    """Probe the candidates and pick one: the fetched kernel whenever it boots (one kernel on
    every CPU), else the packaged one if it boots here. The record to write, or KernelError."""
    probes: list[Probe] = []
    chosen, reason = None, ""
    for candidate in (fetched, packaged):
        if candidate is not None:
            probes.append(probe(candidate))
    by_origin = {p.origin: p for p in probes}
    packaged_said = (
        "not installed"
        if packaged is None
        else (
            "boots here"
            if by_origin["packaged"].booted
            else f"does not boot here ({by_origin['packaged'].detail})"
        )
    )
    if fetched is not None and by_origin["fetched"].booted:
        chosen = fetched
        reason = (
            f"the same kernel on every CPU: {fetched.package}; the packaged kernel {packaged_said}"
        )
    elif packaged is not None and by_origin["packaged"].booted:
        chosen = packaged
        why_not = fetch_error or by_origin["fetched"].detail
        reason = f"fallback: the fetched kernel is unavailable ({why_not}); the packaged one boots"
    if chosen is None:
        said = "; ".join(f"{p.package}: {p.detail}" for p in probes) or "no candidate"
        if fetch_error:
            said += f"; fetching a newer kernel failed: {fetch_error}"
        raise KernelError(f"no user-mode Linux kernel boots on this machine ({said})")
    chosen = replace(chosen, version=by_origin[chosen.origin].version)  # what uname -r said
    return {
        "kernel": asdict(chosen),
        "reason": reason,
        "probes": [asdict(p) for p in probes],
        "cpu": cpu_facts(),
        "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def provision(refresh: bool = False) -> dict:
    """Make sure the lab has a kernel that boots here: fetch (or reuse the fetched kernel unless
    `refresh`), probe every candidate, choose, write kernel.json; the record."""
    fetched, fetch_error = None if refresh else _reuse_fetched(load_record()), None
    if fetched is None:
        try:
            fetched = fetch(kernel_dir() / "fetched")
        except (KernelError, KeyError, IndexError, OSError) as error:
            fetch_error = str(error) or type(error).__name__
    record = choose(fetched, fetch_error, packaged_candidate())
    kernel_dir().mkdir(parents=True, exist_ok=True)
    write_file(record_path(), json.dumps(record, indent=2) + "\n", None)
    return record


def _reuse_fetched(record: dict | None) -> Kernel | None:
    """The recorded fetched kernel, if its files are intact (the binary's package checked)."""
    if record is None or record["kernel"]["origin"] != "fetched":
        return None
    kernel = Kernel(**record["kernel"])
    debs = list((kernel_dir() / "fetched/apt/debs").glob("user-mode-linux_*.deb"))
    intact = Path(kernel.binary).is_file() and (Path(kernel.modules) / "modules.dep").is_file()
    return kernel if intact and debs and _sha256(debs[0]) == kernel.sha256 else None
