"""A throwaway network for tests: N network namespaces on one bridge.

Used on the host kernel and inside the user-mode Linux guest (netem.uml); every name starts
with the given prefix so it never touches anything it did not create. (The local fleet,
`inventory.localfleet`, is the product's own: hosts with sshd, an inventory, a delay node.)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

LAB_IFNAME = "eth0"


@dataclass(frozen=True)
class LabHost:
    """One namespace of the lab: its name, address and a `labels` dict like inventory hosts."""

    name: str
    address: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Lab:
    """The namespaces and bridge of a lab."""

    prefix: str
    bridge: str
    hosts: tuple[LabHost, ...]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_up(n_hosts: int, prefix: str, subnet: str) -> Lab:
    """Create `n_hosts` namespaces `PREFIX-hI` with eth0 at SUBNET.(10+I)/24 on bridge PREFIX-br.

    `subnet` is the first three octets, e.g. "198.19.7"; the bridge itself gets SUBNET.1.
    """
    bridge = f"{prefix}-br"
    _ip("link", "add", bridge, "type", "bridge")
    hosts = []
    try:
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(n_hosts):
            name, peer, address = f"{prefix}-h{i}", f"{prefix}-v{i}", f"{subnet}.{10 + i}"
            _ip("netns", "add", name)
            hosts.append(LabHost(name=name, address=address, labels={}))
            _ip("link", "add", peer, "type", "veth", "peer", "name", LAB_IFNAME, "netns", name)
            _ip("link", "set", peer, "master", bridge, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", LAB_IFNAME)
            _ip("-n", name, "link", "set", LAB_IFNAME, "up")
            _ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        namespaces_down(Lab(prefix=prefix, bridge=bridge, hosts=tuple(hosts)))
        raise
    return Lab(prefix=prefix, bridge=bridge, hosts=tuple(hosts))


def namespaces_down(lab: Lab) -> None:
    """Remove the lab's namespaces (their veths go with them) and its bridge; never raises."""
    for host in lab.hosts:
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", lab.bridge], capture_output=True, check=False)


def in_netns(name: str, argv: list[str]) -> list[str]:
    """`argv` run inside namespace `name`."""
    return ["ip", "netns", "exec", name, *argv]
