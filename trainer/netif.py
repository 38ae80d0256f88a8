"""Which network interface torch.distributed should use, and how many threads a rank gets."""

from __future__ import annotations

import ipaddress
import os
import socket

from pyroute2 import IPRoute

from inventory.errors import ConfigError
from trainer.config import COMMAND_LINE

RTN_LOCAL = 2

SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def route_iface(address: str) -> str:
    """The interface the kernel routes `address` (a name or an IPv4 address) through.

    When `address` is one of this host's own (the master is here), the interface holding it.
    """
    ip = socket.gethostbyname(address)
    with IPRoute() as ipr:
        route = ipr.route("get", dst=ip)[0]
        index = route.get_attr("RTA_OIF")
        if route["type"] == RTN_LOCAL and not ipaddress.ip_address(ip).is_loopback:
            index = ipr.get_addr(address=ip)[0]["index"]
        return ipr.get_links(index)[0].get_attr("IFLA_IFNAME")


def choose_iface(flag: str | None, master_addr: str) -> str:
    """`--iface`, else $WANLAB_IFACE, else $GLOO_SOCKET_IFNAME, else the route to the master.
    An interface named by the first two must exist here (ConfigError naming which gave it)."""
    for source, field, name in (
        (COMMAND_LINE, "iface", flag),
        ("environment", "WANLAB_IFACE", os.environ.get("WANLAB_IFACE")),
    ):
        if name:
            try:
                socket.if_nametoindex(name)
            except (OSError, ValueError):
                raise ConfigError(source, field, f"{name!r} is no interface of this host") from None
            return name
    return os.environ.get("GLOO_SOCKET_IFNAME") or route_iface(master_addr)


def store_address(master_addr: str, iface: str) -> str:
    """The address rank 0's rendezvous store listens on: the master address when this host holds
    it, else the first IPv4 address of `iface` (a master reached through NAT, say)."""
    ip = socket.gethostbyname(master_addr)
    with IPRoute() as ipr:
        if ipaddress.ip_address(ip).is_loopback or ipr.get_addr(address=ip):
            return ip
        links = ipr.link_lookup(ifname=iface)
        held = ipr.get_addr(family=socket.AF_INET, index=links[0]) if links else []
    if not held:
        raise OSError(f"interface {iface!r} holds no IPv4 address for the rendezvous store")
    return held[0].get_attr("IFA_ADDRESS")


def listening_socket(address: str, port: int) -> socket.socket:
    """A TCP socket bound to `address` only and listening (for the store to take over)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def export_iface(iface: str) -> None:
    """Tell gloo and NCCL to use `iface` (else gloo may resolve the hostname to 127.0.0.1)."""
    for var in SOCKET_IFNAME_VARS:
        os.environ[var] = iface


def local_ranks(master_addr: str, world_size: int) -> int:
    """Ranks sharing this machine: $LOCAL_WORLD_SIZE, else all of them when the master is local."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(master_addr)).is_loopback
    except (OSError, ValueError):
        loopback = False
    return world_size if loopback else 1


def default_threads(master_addr: str, world_size: int) -> int:
    """max(1, cores // ranks on this machine)."""
    return max(1, (os.cpu_count() or 1) // local_ranks(master_addr, world_size))
