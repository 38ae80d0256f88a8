"""A throwaway network for tests: N network namespaces on one bridge, without sshd.

Used on the host kernel and inside the user-mode Linux guest (experiments.lab.guest); every name
starts with the given prefix so it never touches anything it did not create. It is built from
the same plumbing as the local fleet (`experiments.lab.netns`), which adds sshd, an inventory
and the delay node.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from experiments.lab import netns

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


def namespaces_up(n_hosts: int, prefix: str, subnet: str) -> Lab:
    """Create `n_hosts` namespaces `PREFIX-hI` with eth0 at SUBNET.(10+I)/24 on bridge PREFIX-br.

    `subnet` is the first three octets, e.g. "198.19.7"; the bridge itself gets SUBNET.1.
    """
    bridge = f"{prefix}-br"
    hosts = []
    try:
        netns.ensure_bridge(bridge, address=f"{subnet}.1/24")
        for i in range(n_hosts):
            name, address = f"{prefix}-h{i}", f"{subnet}.{10 + i}"
            hosts.append(LabHost(name=name, address=address, labels={}))
            netns.ensure_namespace_link(name, f"{prefix}-v{i}", f"{address}/24", bridge)
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
