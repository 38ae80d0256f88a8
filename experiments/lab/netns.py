"""Namespace plumbing on this kernel: network namespaces, veth pairs, bridges and taps.

Every step is idempotent (`ensure_*`), and nothing here touches a name its caller did not give.
The local fleet (`experiments.lab.fleet`) and the tests' throwaway networks build on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS` (inside `netns` if given)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, check=check)


def netns_exists(name: str) -> bool:
    """Whether network namespace `name` exists."""
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    """Whether this namespace has a link called `name`."""
    return ip("link", "show", "dev", name, check=False).returncode == 0


def ensure_bridge(name: str, address: str | None = None) -> None:
    """Bridge `name`, up, with `address` (CIDR) if given."""
    if not link_exists(name):
        ip("link", "add", name, "type", "bridge")
    if address:
        ip("addr", "replace", address, "dev", name)
    ip("link", "set", name, "up")


def ensure_tap(name: str) -> None:
    """Tap `name`, up, without offloads (a frame that crosses a user-mode kernel must be real)."""
    if not link_exists(name):
        ip("tuntap", "add", name, "mode", "tap")
    no_offloads(name)
    ip("link", "set", name, "up")


def ensure_namespace_link(netns: str, outer: str, address: str, master: str) -> None:
    """Namespace `netns` with `eth0` at `address` (CIDR) and `lo` up, its veth peer `outer`
    enslaved to bridge `master` and up."""
    if not netns_exists(netns):
        ip("netns", "add", netns)
    if not link_exists(outer):
        ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", outer, "master", master, "up")
    ip("link", "set", "lo", "up", netns=netns)
    ip("addr", "replace", address, "dev", "eth0", netns=netns)
    ip("link", "set", "eth0", "up", netns=netns)


def no_offloads(ifname: str, netns: str | None = None) -> None:
    """Turn off segmentation and receive offloads and checksum offload on an interface."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    features = ["tso", "off", "gso", "off", "gro", "off", "tx", "off"]
    subprocess.run([*prefix, "ethtool", "-K", ifname, *features], capture_output=True, check=True)


def allow_every_congestion_control() -> None:
    """Let network namespaces choose every congestion control this kernel has.

    A namespace other than the machine's own may only choose those in
    net.ipv4.tcp_allowed_congestion_control, which only the machine's own namespace can widen;
    widening it changes no connection."""
    sysctls = Path("/proc/sys/net/ipv4")
    available = (sysctls / "tcp_available_congestion_control").read_text().split()
    allowed = sysctls / "tcp_allowed_congestion_control"
    if set(available) - set(allowed.read_text().split()):
        allowed.write_text(" ".join(available))


NEIGHBOURS_PER_PAIR = 2
"""Neighbour entries a pair of hosts may hold (each side's entry for the other, with room)."""


def make_room_for_neighbours(n_hosts: int) -> None:
    """Size the kernel's ARP table for `n_hosts` hosts that all talk to each other.

    The table's limits (net.ipv4.neigh.default.gc_thresh1-3, settable only from the machine's
    own namespace) count every namespace's entries together; at the default 1,024 a 48-host
    fleet's full mesh (48 × 47 entries) overflows it, and the kernel then drops packets to
    hosts it can no longer resolve. They are only ever raised, never lowered."""
    sysctls = Path("/proc/sys/net/ipv4/neigh/default")
    wanted = NEIGHBOURS_PER_PAIR * n_hosts * n_hosts
    for name, share in (("gc_thresh3", 1), ("gc_thresh2", 2), ("gc_thresh1", 4)):
        path = sysctls / name
        if int(path.read_text()) < wanted // share:
            path.write_text(str(wanted // share))


def remove_namespace(netns: str, outer: str | None = None) -> None:
    """End every process in `netns` (by PID), delete it, and wait for its veth's outer end."""
    if netns_exists(netns):
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        terminate([int(pid) for pid in pids.stdout.split()])
        ip("netns", "del", netns)
    if outer is None:
        return
    # The kernel removes the outer end of the veth pair with the namespace, asynchronously.
    deadline = time.monotonic() + 2.0
    while link_exists(outer) and time.monotonic() < deadline:
        time.sleep(0.02)
    ip("link", "del", outer, check=False)


def remove_link(name: str) -> None:
    """Delete link `name` if it exists."""
    if link_exists(name):
        ip("link", "del", name)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL whichever is still alive after `grace` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
