"""Choosing the user-mode Linux kernel the lab boots: fetch, probe, choose, record.

Which UML kernel runs depends on the CPU: Debian 12's packaged 6.1 (and Debian 13's 6.12) panic
at boot where the CPU's XSAVE state outgrows their fixed FP save area (CPUs with AMX). So the
lab uses one kernel on every CPU: the newer `user-mode-linux` from Debian's unstable suite,
fetched with a private apt configuration into wanlab's own folder together with the C library
it needs (its interpreter and library path set there with patchelf); nothing of the system's
apt configuration or libraries is touched. Every candidate is proven by a probe boot that loads
the modules the lab needs; the packaged kernel is the fallback where the fetch fails. The
choice goes into `kernel.json` (kernel.py reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from experiments.lab.kernel import (
    MODULE_FAILED,
    Kernel,
    KernelError,
    boot_argv,
    cpu_facts,
    init_prelude,
    kernel_dir,
    load_record,
    panic_line,
    record_path,
    run_bounded,
)
from inventory.safewrite import write_file

PACKAGED_BINARY = Path("/usr/bin/linux.uml")
PACKAGED_MODULES = Path("/usr/lib/uml/modules")
FETCH_SUITE = "sid"
FETCH_PACKAGES = ("user-mode-linux", "libc6")
ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Probe:
    """What one probe boot of a candidate kernel showed."""

    origin: str
    package: str
    booted: bool
    seconds: float
    version: str | None
    detail: str  # the panic or failure line, or "booted; all lab modules loaded"


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
