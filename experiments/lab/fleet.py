"""The local fleet: N hosts on this machine, each a network namespace with its own real sshd.

Hosts hang off one bridge (or, for the delay node, each off its own tap); host i has address
<prefix>.(10+i) on its `eth0`. The namespaces come from `experiments.lab.netns`, each host's
sshd from `experiments.lab.sshd`; this module lays the fleet out, brings it up and down, and
writes its inventory (TOML) and a known_hosts that pins every host key, so strict host-key
checking just works.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from experiments.lab import netns
from experiments.lab.netns import ip, link_exists, netns_exists
from experiments.lab.sshd import LocalSshd, keygen, wait_ready
from inventory.environment import folder_from
from inventory.errors import ConfigError
from inventory.safewrite import write_file
from inventory.tomlfile import read_json

FIRST_HOST_OCTET = 10
TOPOLOGIES = ("bridge", "delay-node")
MAX_HOSTS = 200
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}")


def wanlab_home() -> Path:
    """Where wanlab keeps its state: $WANLAB_HOME, else ~/.wanlab."""
    return folder_from("WANLAB_HOME", Path.home() / ".wanlab")


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
    def sshd(self) -> LocalSshd:
        """This host's sshd."""
        return LocalSshd(self.name, self.netns, self.address, self.directory)


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
        if not _PREFIX.fullmatch(self.prefix):  # it begins every link name (15 characters)
            raise ConfigError(
                "environment", "WANLAB_FLEET_PREFIX", "must be 1-8 lower-case letters or digits"
            )
        subnet = subnet or os.environ.get("WANLAB_FLEET_SUBNET", "198.18.0.0/24")
        try:
            self.network = ipaddress.ip_network(subnet)
        except ValueError as error:
            raise ConfigError("environment", "WANLAB_FLEET_SUBNET", str(error)) from None
        if not self.network.subnet_of(ipaddress.ip_network("198.18.0.0/15")):
            raise ConfigError(
                "environment", "WANLAB_FLEET_SUBNET", f"{subnet} must lie inside 198.18.0.0/15"
            )
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
            state = read_json(self.state_file)
        except ConfigError:
            return None
        topology = state.get("topology") if isinstance(state, dict) else None
        return topology if topology in TOPOLOGIES else None

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
            raise ConfigError(None, "topology", f"must be one of {', '.join(TOPOLOGIES)}")
        self.check_size(n_hosts)
        if self.topology not in (None, topology):
            self.down()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(self.state_file, json.dumps({"topology": topology}), None)
        self.empty_home.mkdir(exist_ok=True)
        self._ensure_client_key()
        netns.allow_every_congestion_control()  # so a TCP preset may choose any of them
        netns.make_room_for_neighbours(n_hosts)
        for host in self.existing_hosts():
            if host.index >= n_hosts:
                self._remove_host(host)
        hosts = [self.host(i) for i in range(n_hosts)]
        gateway = f"{self.gateway}/{self.network.prefixlen}"
        if topology == "bridge":
            netns.ensure_bridge(self.bridge, address=gateway)
        else:
            netns.ensure_tap(self.controller_tap)
            ip("addr", "replace", gateway, "dev", self.controller_tap)
        for host in hosts:
            self._ensure_host_network(host, topology)
            host.sshd.start(self.directory / "authorized_keys", self.empty_home)
        known = "".join(h.sshd.known_hosts_line() + "\n" for h in hosts)
        write_file(self.known_hosts, known, None)
        self._write_inventory(hosts, topology)
        if topology == "bridge":
            self.wait_ready()
        return self.inventory_path

    def check_size(self, n_hosts: int) -> None:
        """Refuse a host count the fleet's subnet (or wanlab) cannot hold, touching nothing."""
        limit = min(MAX_HOSTS, self.network.num_addresses - FIRST_HOST_OCTET - 1)
        if not 1 <= n_hosts <= limit:
            raise ConfigError(None, "--hosts", f"must be between 1 and {limit}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every host's sshd answers on port 22 and has recorded its PID."""
        wait_ready([h.sshd for h in self.existing_hosts() if h.directory.exists()], timeout)

    def _ensure_client_key(self) -> None:
        if not self.client_key.exists():
            keygen(self.client_key, comment="wanlab-local")
        public = self.client_key.with_suffix(".pub").read_text()
        write_file(self.directory / "authorized_keys", public, None, mode=0o600)

    def _ensure_host_network(self, host: LocalHost, topology: str) -> None:
        address = f"{host.address}/{self.network.prefixlen}"
        if topology == "bridge":
            netns.ensure_namespace_link(host.netns, host.bridge_port, address, self.bridge)
            return
        # Host i's own bridge joins its veth to its tap. A frame that crosses the delay node
        # must be a real frame: no segmentation offload on any hop, or the node drops the
        # oversized packets.
        netns.ensure_bridge(host.own_bridge)
        netns.ensure_tap(host.tap)
        ip("link", "set", host.tap, "master", host.own_bridge)
        netns.ensure_namespace_link(host.netns, host.bridge_port, address, host.own_bridge)
        netns.no_offloads(host.bridge_port)
        netns.no_offloads("eth0", netns=host.netns)

    def workdir(self, host: LocalHost) -> Path:
        """The host's own folder (its code, its agent's state, its deployed environment)."""
        return self.directory / "work" / host.name

    def python(self, host: LocalHost) -> str:
        """The environment `wanlab deploy` made in the host's folder, else this python."""
        deployed = self.workdir(host) / "env" / "bin" / "python"
        return str(deployed) if deployed.exists() else sys.executable

    def refresh_inventory(self) -> None:
        """Write the inventory again for the hosts that are up (after a deploy, say)."""
        self._write_inventory(self.existing_hosts(), self.topology or "bridge")

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
            },
            "hosts": [
                {"name": h.name, "address": h.address, "labels": {"netns": h.netns},
                 "workdir": str(self.workdir(h)), "python": self.python(h)}
                for h in hosts
            ],
        }  # fmt: skip
        header = (
            "# Written by `wanlab fleet up`: the local fleet, one network namespace per host.\n"
        )
        write_file(self.inventory_path, header + tomli_w.dumps(document), None)

    # -- down -------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every process, remove every namespace, link and file the fleet made."""
        for host in self.existing_hosts():
            self._remove_host(host)
        for link in (self.bridge, self.controller_tap):
            netns.remove_link(link)
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def _remove_host(self, host: LocalHost) -> None:
        netns.remove_namespace(host.netns, outer=host.bridge_port)
        for link in (host.tap, host.own_bridge):
            netns.remove_link(link)
        if host.directory.exists():
            shutil.rmtree(host.directory)

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        """What exists now: bridge, and per host its namespace, sshd PID and open SSH port."""
        hosts = []
        for host in self.existing_hosts():
            pid = host.sshd.pid()
            hosts.append(
                {
                    "name": host.name,
                    "address": host.address,
                    "netns": host.netns,
                    "netns_exists": netns_exists(host.netns),
                    "sshd_pid": pid,
                    "ssh_port_open": pid is not None and host.sshd.ready(),
                }
            )
        return {
            "prefix": self.prefix,
            "topology": self.topology,
            "bridge": self.bridge,
            "bridge_exists": link_exists(self.bridge),
            "inventory": str(self.inventory_path) if self.inventory_path.exists() else None,
            "hosts": hosts,
        }
