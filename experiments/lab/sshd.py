"""A real sshd per local host: its own host key and config, run inside the host's namespace
with a private hostname (UTS namespace) and a private /run (tmpfs), so each host's agent keeps
its own state."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from experiments.lab.netns import pid_alive
from inventory.ports import port_open
from inventory.safewrite import write_file

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, comment: str) -> None:
    """Make a new ed25519 key pair at `path` (and `path`.pub), without a passphrase."""
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    subprocess.run(argv, check=True)


class LocalSshd:
    """The sshd of one local host; its files live in `directory`."""

    def __init__(self, name: str, netns: str, address: str, directory: Path):
        self.name = name
        self.netns = netns
        self.address = address
        self.directory = directory
        self.config = directory / "sshd_config"
        self.host_key = directory / "ssh_host_ed25519_key"
        self.pid_file = directory / "sshd.pid"
        self.log_file = directory / "sshd.log"

    def pid(self) -> int | None:
        """PID of this sshd if it is running, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and str(self.config).encode() in cmdline else None

    def start(self, authorized_keys: Path, home: Path) -> None:
        """Start it unless it runs (key-only root login from `authorized_keys`, HOME=`home`)."""
        if self.pid() is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, comment=self.name)
        write_file(self.config, self._config_text(authorized_keys, home), None)
        script = (
            f"hostname {self.name}"
            " && mount -t tmpfs -o size=16m,mode=755 run /run"
            " && mkdir -p -m 755 /run/sshd"
            f" && exec {SSHD} -f {self.config} -E {self.log_file}"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script],
            check=True,
            capture_output=True,
            text=True,
        )

    def ready(self) -> bool:
        """It has recorded its PID and answers on port 22 (it listens before it writes the PID
        file, and a later start relies on that file)."""
        return self.pid() is not None and port_open(self.address, 22)

    def known_hosts_line(self) -> str:
        """`ADDRESS TYPE KEY`: the line that pins this host's key."""
        key_type, key_data = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.address} {key_type} {key_data}"

    def _config_text(self, authorized_keys: Path, home: Path) -> str:
        return "\n".join(
            [
                f"ListenAddress {self.address}",
                "Port 22",
                f"HostKey {self.host_key}",
                f"PidFile {self.pid_file}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                "MaxStartups 200",
                "MaxSessions 64",
                f"SetEnv HOME={home}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )


def wait_ready(daemons: list[LocalSshd], timeout: float = 10.0) -> None:
    """Wait until every sshd is ready; RuntimeError naming those that are not."""
    deadline = time.monotonic() + timeout
    waiting = list(daemons)
    while waiting:
        waiting = [sshd for sshd in waiting if not sshd.ready()]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(sshd.name for sshd in waiting)
            raise RuntimeError(f"sshd did not start on {names}; see {waiting[0].log_file}")
        if waiting:
            time.sleep(0.05)
