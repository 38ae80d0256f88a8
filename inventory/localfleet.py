"""The local fleet: N hosts on this machine, each a network namespace with its own real sshd.

Hosts hang off one bridge; host i has address <prefix>.(10+i) on its `eth0`, its own host key and
its own hostname (a private UTS namespace) and /run (a private tmpfs). The fleet writes an
inventory and a known_hosts that pin every host key, so strict host-key checking just works.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from inventory.ports import port_open

FIRST_HOST_OCTET = 10
TOPOLOGIES = ("bridge", "delay-node")
MAX_HOSTS = 200
SSHD = "/usr/sbin/sshd"


def wanlab_home() -> Path:
    """Where wanlab keeps its state: $WANLAB_HOME, else ~/.wanlab."""
    return Path(os.environ.get("WANLAB_HOME", Path.home() / ".wanlab"))


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, check=check)


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


@dataclass(frozen=True)
class LocalHost:
    """One local host: its name, namespace, addresses and files."""

    index: int
    name: str
    netns: str
    address: str
    bridge_port: str
    own_bridge: str
    tap: str
    directory: Path

    @property
    def sshd_config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "sshd.log"

    def sshd_pid(self) -> int | None:
        """PID of this host's sshd if it is running, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return pid if str(self.sshd_config).encode() in cmdline else None


class LocalFleet:
    """Create, inspect and remove the local fleet; every step is idempotent.

    Several fleets can coexist: each has its own name prefix (namespaces `<prefix>-h0`…, bridge
    `<prefix>-br0`) and /24 inside 198.18.0.0/15. The defaults come from $WANLAB_FLEET_PREFIX and
    $WANLAB_FLEET_SUBNET, else `wl` and 198.18.0.0/24.
    """

    def __init__(
        self, prefix: str | None = None, subnet: str | None = None, home: Path | None = None
    ):
        self.prefix = prefix or os.environ.get("WANLAB_FLEET_PREFIX", "wl")
        subnet = subnet or os.environ.get("WANLAB_FLEET_SUBNET", "198.18.0.0/24")
        self.network = ipaddress.ip_network(subnet)
        if not self.network.subnet_of(ipaddress.ip_network("198.18.0.0/15")):
            raise ValueError(f"local fleet subnet {subnet} must lie inside 198.18.0.0/15")
        self.directory = (home or wanlab_home()) / f"fleet-{self.prefix}"
        self.bridge = f"{self.prefix}-br0"
        self.controller_tap = f"{self.prefix}-tc"
        self.gateway = str(self.network.network_address + 1)

    # -- layout -----------------------------------------------------------------------------
    @property
    def inventory_path(self) -> Path:
        return self.directory / "inventory.toml"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def state_file(self) -> Path:
        return self.directory / "fleet.json"

    @property
    def node_directory(self) -> Path:
        """The delay node's folder (mailbox, logs), used by the delay-node topology."""
        return self.directory / "node"

    @property
    def topology(self) -> str | None:
        """`bridge` or `delay-node` while the fleet is up, else None."""
        try:
            return json.loads(self.state_file.read_text())["topology"]
        except (OSError, ValueError, KeyError):
            return None

    def taps(self, n_hosts: int) -> list[str]:
        """The delay node's taps in its interface order: the hosts', then the controller's."""
        return [self.host(i).tap for i in range(n_hosts)] + [self.controller_tap]

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def empty_home(self) -> Path:
        """HOME for SSH sessions: empty, so no shell start-up file slows every command."""
        return self.directory / "home"

    def host(self, index: int) -> LocalHost:
        """The layout of host number `index`."""
        name = f"h{index}"
        return LocalHost(
            index=index,
            name=name,
            netns=f"{self.prefix}-{name}",
            address=str(self.network.network_address + FIRST_HOST_OCTET + index),
            bridge_port=f"{self.prefix}-{name}",
            own_bridge=f"{self.prefix}-b{index}",
            tap=f"{self.prefix}-t{index}",
            directory=self.directory / name,
        )

    def existing_hosts(self) -> list[LocalHost]:
        """Hosts that have a namespace or a state folder now, in index order."""
        indices = set()
        netns_dir = Path("/run/netns")
        for path in netns_dir.glob(f"{self.prefix}-h*") if netns_dir.exists() else []:
            suffix = path.name.removeprefix(f"{self.prefix}-h")
            if suffix.isdigit():
                indices.add(int(suffix))
        if self.directory.exists():
            for path in self.directory.glob("h*"):
                if path.name[1:].isdigit():
                    indices.add(int(path.name[1:]))
        return [self.host(i) for i in sorted(indices)]

    # -- up ---------------------------------------------------------------------------------
    def up(self, n_hosts: int, topology: str = "bridge") -> Path:
        """Bring the fleet to exactly `n_hosts` running hosts; return the inventory path.

        `bridge`: every host on one bridge of this kernel, shaped on its own interface.
        `delay-node`: host i's link ends in tap `<prefix>-t<i>` and the controller's in
        `<prefix>-tc`, for a delay node to forward and shape between them; sshd is started but
        not waited for, since nothing is reachable until the node runs (see `wait_ready`).
        """
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}")
        capacity = self.network.num_addresses - FIRST_HOST_OCTET - 1
        if not 1 <= n_hosts <= min(MAX_HOSTS, capacity):
            raise ValueError(f"--hosts must be between 1 and {min(MAX_HOSTS, capacity)}")
        if self.topology not in (None, topology):
            self.down()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_file.write_text(json.dumps({"topology": topology}))
        self.empty_home.mkdir(exist_ok=True)
        self._ensure_client_key()
        for host in self.existing_hosts():
            if host.index >= n_hosts:
                self._remove_host(host)
        hosts = [self.host(i) for i in range(n_hosts)]
        if topology == "bridge":
            self._ensure_bridge(self.bridge, address=True)
        else:
            self._ensure_tap(self.controller_tap)
            _ip("addr", "replace", f"{self.gateway}/{self.network.prefixlen}", "dev",
                self.controller_tap)  # fmt: skip
        for host in hosts:
            self._ensure_host_network(host, topology)
            self._ensure_sshd(host)
        self._write_known_hosts(hosts)
        self._write_inventory(hosts, topology)
        if topology == "bridge":
            self.wait_ready()
        return self.inventory_path

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every host's sshd answers on port 22 and has recorded its PID (it listens
        before it writes the PID file, and `up` again relies on that file)."""
        self._wait_started([h for h in self.existing_hosts() if h.directory.exists()], timeout)

    def _ensure_client_key(self) -> None:
        if not self.client_key.exists():
            _keygen(self.client_key, comment="wanlab-local")
        authorized = self.directory / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)

    def _ensure_bridge(self, name: str, address: bool = False) -> None:
        if not _link_exists(name):
            _ip("link", "add", name, "type", "bridge")
        if address:
            _ip("addr", "replace", f"{self.gateway}/{self.network.prefixlen}", "dev", name)
        _ip("link", "set", name, "up")

    @staticmethod
    def _ensure_tap(name: str) -> None:
        if not _link_exists(name):
            _ip("tuntap", "add", name, "mode", "tap")
        _no_offloads(name)
        _ip("link", "set", name, "up")

    def _ensure_host_network(self, host: LocalHost, topology: str) -> None:
        if not _netns_exists(host.netns):
            _ip("netns", "add", host.netns)
        if not _link_exists(host.bridge_port):
            veth = ["link", "add", host.bridge_port, "type", "veth", "peer", "name", "eth0"]
            _ip(*veth, "netns", host.netns)
        if topology == "bridge":
            _ip("link", "set", host.bridge_port, "master", self.bridge, "up")
        else:
            # A frame that crosses the delay node must be a real frame: no segmentation
            # offload on any hop, or the node drops the oversized packets.
            self._ensure_bridge(host.own_bridge)
            self._ensure_tap(host.tap)
            _ip("link", "set", host.tap, "master", host.own_bridge)
            _ip("link", "set", host.bridge_port, "master", host.own_bridge, "up")
            _no_offloads(host.bridge_port)
            _no_offloads("eth0", netns=host.netns)
        _ip("link", "set", "lo", "up", netns=host.netns)
        address = f"{host.address}/{self.network.prefixlen}"
        _ip("addr", "replace", address, "dev", "eth0", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)

    def _ensure_sshd(self, host: LocalHost) -> None:
        if host.sshd_pid() is not None:
            return
        host.directory.mkdir(parents=True, exist_ok=True)
        if not host.host_key.exists():
            _keygen(host.host_key, comment=host.name)
        host.sshd_config.write_text(self._sshd_config(host))
        script = (
            f"hostname {host.name}"
            " && mount -t tmpfs -o size=16m,mode=755 run /run"
            " && mkdir -p -m 755 /run/sshd"
            f" && exec {SSHD} -f {host.sshd_config} -E {host.log_file}"
        )
        subprocess.run(
            ["ip", "netns", "exec", host.netns, "unshare", "--uts", "sh", "-c", script],
            check=True,
            capture_output=True,
            text=True,
        )

    def _sshd_config(self, host: LocalHost) -> str:
        return "\n".join(
            [
                f"ListenAddress {host.address}",
                "Port 22",
                f"HostKey {host.host_key}",
                f"PidFile {host.pid_file}",
                f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                "MaxStartups 200",
                "MaxSessions 64",
                f"SetEnv HOME={self.empty_home}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def _wait_started(self, hosts: list[LocalHost], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(hosts)
        while waiting:
            waiting = [h for h in waiting if h.sshd_pid() is None or not port_open(h.address, 22)]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(h.name for h in waiting)
                raise RuntimeError(f"sshd did not start on {names}; see {waiting[0].log_file}")
            if waiting:
                time.sleep(0.05)

    def _write_known_hosts(self, hosts: list[LocalHost]) -> None:
        lines = []
        for host in hosts:
            key_type, key_data = host.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{host.address} {key_type} {key_data}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _write_inventory(self, hosts: list[LocalHost], topology: str) -> None:
        fleet: dict = {
            "name": f"local-{self.prefix}",
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 5.0,
        }
        if topology == "delay-node":  # the hosts' egress is shaped on this node, not on them
            fleet["delay_node"] = {
                "mailbox": str(self.node_directory),
                "interfaces": {h.name: f"ifb{h.index}" for h in hosts},
            }
        document = {
            "fleet": fleet,
            "defaults": {
                "user": "root",
                "key_file": str(self.client_key),
                "interface": "eth0",
                "python": sys.executable,
                "workdir": str(self.directory / "work"),
            },
            "hosts": [
                {"name": h.name, "address": h.address, "labels": {"netns": h.netns}} for h in hosts
            ],
        }
        header = (
            "# Written by `wanlab fleet up`: the local fleet, one network namespace per host.\n"
        )
        self.inventory_path.write_text(header + tomli_w.dumps(document))

    # -- down -------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every process, remove every namespace, link and file the fleet made."""
        for host in self.existing_hosts():
            self._remove_host(host)
        for link in (self.bridge, self.controller_tap):
            if _link_exists(link):
                _ip("link", "del", link)
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def _remove_host(self, host: LocalHost) -> None:
        if _netns_exists(host.netns):
            pids = subprocess.run(
                ["ip", "netns", "pids", host.netns], capture_output=True, text=True
            ).stdout.split()
            _terminate([int(pid) for pid in pids])
            _ip("netns", "del", host.netns)
        # The kernel removes the bridge end of the veth pair with the namespace, asynchronously.
        deadline = time.monotonic() + 2.0
        while _link_exists(host.bridge_port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _link_exists(host.bridge_port):
            _ip("link", "del", host.bridge_port, check=False)
        for link in (host.tap, host.own_bridge):
            if _link_exists(link):
                _ip("link", "del", link)
        if host.directory.exists():
            shutil.rmtree(host.directory)

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        """What exists now: bridge, and per host its namespace, sshd PID and open SSH port."""
        hosts = []
        for host in self.existing_hosts():
            pid = host.sshd_pid()
            hosts.append(
                {
                    "name": host.name,
                    "address": host.address,
                    "netns": host.netns,
                    "netns_exists": _netns_exists(host.netns),
                    "sshd_pid": pid,
                    "ssh_port_open": pid is not None and port_open(host.address, 22),
                }
            )
        return {
            "prefix": self.prefix,
            "topology": self.topology,
            "bridge": self.bridge,
            "bridge_exists": _link_exists(self.bridge),
            "inventory": str(self.inventory_path) if self.inventory_path.exists() else None,
            "hosts": hosts,
        }


def _keygen(path: Path, comment: str) -> None:
    """Make a new ed25519 key pair at `path` (and `path`.pub), without a passphrase."""
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    subprocess.run(argv, check=True)


def _no_offloads(ifname: str, netns: str | None = None) -> None:
    """Turn off segmentation and receive offloads and checksum offload on an interface."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    features = ["tso", "off", "gso", "off", "gro", "off", "tx", "off"]
    subprocess.run([*prefix, "ethtool", "-K", ifname, *features], capture_output=True, check=True)


def _terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL whichever is still alive after `grace` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
