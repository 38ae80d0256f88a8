"""Ship wanlab's own code to every host as one zip file (Python imports packages from a zip).

Hosts then need only Python and the third-party libraries the shipped code imports; the remote
command puts the zip first on PYTHONPATH.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from inventory.errors import HostsUnreachable
from inventory.models import Fleet, Host
from inventory.ssh import FleetSSH, HostResult

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_zip(patterns: tuple[str, ...]) -> bytes:
    """The files matching `patterns` (relative to the source tree) as a zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for pattern in patterns:
            for path in sorted(REPO_ROOT.glob(pattern)):
                archive.write(path, path.relative_to(REPO_ROOT).as_posix())
    return buffer.getvalue()


def raise_on_failure(results: dict[str, HostResult], what: str) -> None:
    """Raise HostsUnreachable naming every host whose result failed, with its reason."""
    bad = {name: r.error or r.stderr.strip() for name, r in results.items() if not r.ok}
    if bad:
        raise HostsUnreachable(what, bad)


def ship_code(ssh: FleetSSH, fleet: Fleet, patterns: tuple[str, ...], name: str) -> dict[str, str]:
    """Upload the code zip into every host's workdir; return each host's zip path."""

    def mkdir(host: Host) -> list[str]:
        code = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True)"
        return [host.python, "-c", code, host.workdir]

    raise_on_failure(ssh.run(mkdir), "cannot make the workdir")
    remote = {host.name: f"{host.workdir}/{name}-{host.name}.zip" for host in fleet.hosts}
    with tempfile.TemporaryDirectory(prefix="wanlab-ship-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        archive.write_bytes(code_zip(patterns))
        for host in fleet.hosts:
            raise_on_failure(ssh.put(archive, remote[host.name], hosts=[host.name]), "upload")
    return remote
