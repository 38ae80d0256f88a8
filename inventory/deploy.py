"""`wanlab deploy`: install wanlab and what its host side needs into an environment on every host.

The controller builds a wheelhouse (wanlab's own wheel, and wheels of the host side's
requirements, downloaded here so that hosts need no package registry), uploads it to every
host, and runs `inventory/host_install.py` there, all hosts in parallel. Each host gets
`WORKDIR/env`, a virtual environment that sees the host's own packages, so a torch already
installed there is reused. A host whose environment carries the same stamp (the wheelhouse's
digest) is skipped. Afterwards a host's python is `WORKDIR/env/bin/python` (`env_python`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path, PurePosixPath

from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from inventory.ship import REPO_ROOT
from inventory.ssh import FleetSSH, HostResult

HOST_REQUIREMENTS = ("pyroute2>=0.9.1", "pydantic>=2.6", "numpy>=1.26", "torch>=2.8")
"""What the code that runs on hosts (the agent, the probe, the trainer) imports."""
INSTALL_SCRIPT = (Path(__file__).parent / "host_install.py").read_text()
INSTALL_TIMEOUT_S = 900.0
PACKAGES = ("inventory", "netem", "trainer", "experiments")


def env_python(host: Host) -> str:
    """The python of the environment `wanlab deploy` makes on `host`."""
    return str(PurePosixPath(host.workdir) / "env" / "bin" / "python")


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ConfigError("wheelhouse", None, f"pip {args[0]} failed: {lines[-1] if lines else ''}")


def build_wheelhouse(directory: Path, with_torch: bool) -> list[str]:
    """wanlab's wheel and the host requirements' wheels in `directory`; the requirements
    hosts install from it (torch only `with_torch`: else a host must have its own)."""
    with tempfile.TemporaryDirectory(prefix="wanlab-source-") as source:
        # a copy: building in place would leave build/ and *.egg-info in the source tree
        for name in ("pyproject.toml", "README.md", *PACKAGES):
            copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
            copy(REPO_ROOT / name, Path(source) / name)
        _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(directory),
             source)  # fmt: skip
    requirements = [r for r in HOST_REQUIREMENTS if with_torch or not r.startswith("torch")]
    if with_torch:  # this machine's torch, never one that pip would pick
        requirements[-1] = f"torch=={version('torch').split('+')[0]}"
    _pip("download", "--only-binary=:all:", "--quiet", "-d", str(directory), *requirements)
    return requirements + ([] if with_torch else ["torch"])


def wheelhouse_stamp(directory: Path, requirements: list[str]) -> str:
    """A digest of what the wheels hold and the requirements: equal stamps, equal installs (a
    wheel built again differs only in its archive's timestamps, which are left out)."""
    digest = hashlib.sha256(json.dumps(requirements).encode())
    for wheel in sorted(directory.iterdir()):
        digest.update(wheel.name.encode())
        with zipfile.ZipFile(wheel) as archive:
            for name in sorted(archive.namelist()):
                digest.update(name.encode())
                digest.update(hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()[:16]


def deploy(fleet: Fleet, with_torch: bool = False) -> dict[str, dict]:
    """Install on every host; per host what happened (status, installed, reused, versions)."""
    with tempfile.TemporaryDirectory(prefix="wanlab-wheelhouse-") as tmp:
        wheelhouse = Path(tmp)
        requirements = build_wheelhouse(wheelhouse, with_torch)
        stamp = wheelhouse_stamp(wheelhouse, requirements)
        with FleetSSH(fleet) as ssh:
            return _install(ssh, fleet, wheelhouse, stamp, requirements)


def _install(
    ssh: FleetSSH, fleet: Fleet, wheelhouse: Path, stamp: str, requirements: list[str]
) -> dict[str, dict]:
    def folder(host: Host) -> str:
        return str(PurePosixPath(host.workdir) / "wheelhouse")

    def mkdir(host: Host) -> list[str]:
        code = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True)"
        return [host.python, "-c", code, folder(host)]

    reports: dict[str, dict] = {}
    made = ssh.run(mkdir)
    ready = [name for name, result in made.items() if _failed(result, reports) is None]
    for wheel in sorted(wheelhouse.iterdir()):
        for host in [fleet.host(name) for name in ready]:
            result = ssh.put(wheel, f"{folder(host)}/{wheel.name}", hosts=[host.name])[host.name]
            if _failed(result, reports) is not None:
                ready.remove(host.name)

    def install(host: Host) -> list[str]:
        return [host.python, "-c", INSTALL_SCRIPT, host.workdir, stamp, *requirements]

    for name, result in ssh.run(install, timeout=INSTALL_TIMEOUT_S, hosts=ready).items():
        if _failed(result, reports) is None:
            reports[name] = json.loads(result.stdout.strip().splitlines()[-1])
    return {host.name: reports[host.name] for host in fleet.hosts}


def _failed(result: HostResult, reports: dict[str, dict]) -> str | None:
    """Record a host whose step failed (and say why); None when it went well."""
    if result.ok:
        return None
    why = result.error or result.stderr.strip()[-300:] or f"exit {result.exit_code}"
    reports[result.host] = {"status": "failed", "why": why}
    return why


def with_environments(fleet: Fleet, reports: dict[str, dict]) -> Fleet:
    """The fleet with each deployed host's python in its new environment."""
    hosts = [
        host.model_copy(update={"python": env_python(host)})
        if reports.get(host.name, {}).get("status") in ("installed", "skipped")
        else host
        for host in fleet.hosts
    ]
    return fleet.model_copy(update={"hosts": hosts})
