"""Every way the delay node can fail to start gives one clear message and leaves nothing behind.

The failures are made real where they can be: the lab's own kernel with a module taken away, a
tap held open by this process, a kernel record whose binary is gone. A kernel that panics at
boot is a stand-in (a script that prints what Debian 12's kernel printed on a CPU with AMX and
exits), since this machine's CPU may boot every kernel; so is one that never says ready (a
script that sleeps).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from experiments import lab
from experiments.lab import kernel
from experiments.lab.fleet import LocalFleet
from experiments.lab.node import DelayNode, DelayNodeError

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no lab kernel: run install.sh")

PANIC_CONSOLE = """Checking that ptrace can change system call numbers...OK
userspace - ptrace set fp regs failed, errno = 14
Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
"""
PREFIX = "wlf"
SUBNET = "198.18.9.0/24"


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    """A private kernel folder whose record the test writes (the real lab kernel by default)."""
    real = kernel.load_record()
    folder = tmp_path / "kernel"
    folder.mkdir()
    monkeypatch.setenv("WANLAB_KERNEL_DIR", str(folder))

    def record(**changes) -> kernel.Kernel:
        chosen = kernel.Kernel(**{**real["kernel"], **changes})
        entry = {**real, "kernel": asdict(chosen)}
        (folder / "kernel.json").write_text(json.dumps(entry))
        return chosen

    return record


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("WANLAB_HOME", str(home))
    monkeypatch.setenv("WANLAB_FLEET_PREFIX", PREFIX)
    monkeypatch.setenv("WANLAB_FLEET_SUBNET", SUBNET)
    fleet = LocalFleet(prefix=PREFIX, subnet=SUBNET, home=home)
    yield fleet
    assert _left_behind(fleet) == [], "a failed start left these behind"


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _left_behind(fleet: LocalFleet) -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    links = [e["ifname"] for e in json.loads(out) if e["ifname"].startswith(PREFIX)]
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout
    namespaces = [e["name"] for e in json.loads(out or "[]") if e["name"].startswith(PREFIX)]
    processes = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(fleet.directory).encode() in cmdline.read_bytes():
                processes.append(f"process {cmdline.parent.name}")
        except OSError:
            continue
    folders = [str(fleet.directory)] if fleet.directory.exists() else []
    return links + namespaces + processes + folders


def _wanlab(*args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", "from experiments.cli import main; main()", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_a_kernel_that_panics(kernel_dir, fleet, tmp_path):
    kernel_dir(binary=_script(tmp_path / "panics", f"cat <<'EOF'\n{PANIC_CONSOLE}EOF\nexit 1"))
    result = _wanlab("fleet", "up", "--hosts", "2", "--shaping", "delay-node")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()  # one line, no traceback
    assert "panicked at boot: userspace - ptrace set fp regs failed, errno = 14" in line
    assert "wanlab fleet kernel --refresh" in line


def test_a_module_missing(kernel_dir, fleet, tmp_path):
    real = kernel_dir()  # the lab's own kernel, ...
    modules = tmp_path / "modules"
    modules.mkdir()
    for listing in ("modules.dep", "modules.builtin"):
        source = Path(real.modules) / listing
        if source.exists():
            (modules / listing).write_text(source.read_text())
    for module_file in real.load_order():
        if module_file.name != "sch_netem.ko":
            link = modules / module_file.relative_to(real.modules)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(module_file)
    kernel_dir(modules=str(modules))  # ... with sch_netem taken away
    result = _wanlab("fleet", "up", "--hosts", "2", "--shaping", "delay-node")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "could not load a module" in line and "sch_netem.ko" in line, line


def test_the_kernel_gone(kernel_dir, fleet, tmp_path):
    kernel_dir(binary=str(tmp_path / "no-such-kernel"))
    result = _wanlab("fleet", "up", "--hosts", "2", "--shaping", "delay-node")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "is gone" in line and "wanlab fleet kernel" in line, line


def test_a_tap_held_by_another_process(kernel_dir, fleet):
    kernel_dir()
    tap = fleet.host(0).tap
    subprocess.run(["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
    held = os.open("/dev/net/tun", os.O_RDWR)
    try:
        iff_tap, iff_no_pi, tunsetiff = 0x0002, 0x1000, 0x400454CA
        fcntl.ioctl(held, tunsetiff, struct.pack("16sH", tap.encode(), iff_tap | iff_no_pi))
        with pytest.raises(DelayNodeError) as failure:
            lab.up(2, shaping="delay-node", fleet=fleet)
    finally:
        os.close(held)
    assert failure.value.exit_code == 2
    assert f"tap {tap} is held by another process (PID {os.getpid()}" in str(failure.value)


def test_a_node_that_never_says_ready(kernel_dir, tmp_path):
    pid_file = tmp_path / "stand-in.pid"
    kernel_dir(binary=_script(tmp_path / "hangs", f"echo $$ > {pid_file}\nexec sleep 600"))
    node = DelayNode(tmp_path / "node")
    with pytest.raises(DelayNodeError) as failure:
        node.start(taps=[], timeout=2)
    assert failure.value.exit_code == 1
    assert "did not say ready within 2 s" in str(failure.value)
    assert node.pid() is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
