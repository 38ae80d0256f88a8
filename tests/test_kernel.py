"""Which user-mode Linux kernel the lab boots, and why: the same fetched kernel on every CPU.

The candidates are probed by real boots. A kernel that panics is a stand-in (a script that
prints what Debian 12's kernel printed on a CPU with AMX, then exits), since this machine's CPU
may boot every kernel: that is how the choice an AMX machine makes is exercised everywhere.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from experiments.lab import kernel, kernelfetch

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no lab kernel: run install.sh")

PANIC = "userspace - ptrace set fp regs failed, errno = 14"


@pytest.fixture
def panicking(tmp_path) -> kernel.Kernel:
    script = tmp_path / "linux.uml"
    script.write_text(
        f"#!/bin/sh\necho '{PANIC}'\n"
        "echo 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b'\nexit 1\n"
    )
    script.chmod(0o755)
    return replace(kernel.current(), binary=str(script), origin="packaged", package="stand-in")


def test_the_lab_boots_the_fetched_kernel_from_its_own_folder():
    """CI takes the path an AMX machine takes, whatever its own CPU: the fetched kernel, with
    its own C library (the system's is too old for it), chosen after a probe boot."""
    record = kernel.load_record()
    chosen = kernel.current()
    assert chosen.origin == "fetched", record["reason"]
    assert Path(chosen.binary).is_relative_to(kernel.kernel_dir())
    interpreter = subprocess.run(
        ["patchelf", "--print-interpreter", chosen.binary],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(interpreter).is_relative_to(kernel.kernel_dir())
    [probe] = [p for p in record["probes"] if p["origin"] == "fetched"]
    assert probe["booted"] and probe["version"] == chosen.version


def test_a_packaged_kernel_that_panics_is_named_with_its_panic(panicking):
    record = kernelfetch.choose(kernel.current(), None, panicking)
    assert record["kernel"]["origin"] == "fetched"
    assert f"does not boot here ({PANIC} / Kernel panic" in record["reason"]
    booted = {p["package"]: p["booted"] for p in record["probes"]}
    assert booted == {kernel.current().package: True, "stand-in": False}


def test_the_packaged_kernel_is_the_fallback_when_the_fetch_fails():
    packaged = replace(kernel.current(), origin="packaged", package="as packaged")
    record = kernelfetch.choose(None, "apt-get download failed (exit 100)", packaged)
    assert record["kernel"]["package"] == "as packaged"
    assert "fallback" in record["reason"] and "apt-get download failed" in record["reason"]


def test_no_kernel_that_boots_is_one_clear_error(panicking):
    fetched = replace(panicking, origin="fetched", package="fetched stand-in")
    with pytest.raises(kernel.KernelError) as failure:
        kernelfetch.choose(fetched, None, panicking)
    assert f"fetched stand-in: {PANIC}" in str(failure.value)
    assert f"stand-in: {PANIC}" in str(failure.value)


def test_modules_load_after_what_they_depend_on():
    chosen = kernel.current()
    folder = Path(chosen.modules)
    depends = {}
    for line in (folder / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        depends[folder / module] = [folder / n for n in needs.split()]
    order = chosen.load_order()
    assert {p.name for p in order} >= {"sch_netem.ko", "sch_htb.ko", "cls_u32.ko", "bridge.ko"}
    for position, module in enumerate(order):
        assert set(depends[module]) <= set(order[:position]), module
