"""The local fleet: up, up again (idempotent), down leaves the machine as it was, up once more."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from experiments.lab import netns
from experiments.lab.fleet import LocalFleet
from inventory.loader import load_inventory

PREFIX = "wly"


def _namespaces() -> set[str]:
    """This test's namespaces (other fleets may come and go on the machine meanwhile)."""
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout
    return {e["name"] for e in json.loads(out or "[]") if e["name"].startswith(PREFIX)}


def _links() -> set[str]:
    """This test's links in the root namespace."""
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return {e["ifname"] for e in json.loads(out) if e["ifname"].startswith(PREFIX)}


def test_up_down_up_again(wanlab_env, tmp_path):
    fleet = LocalFleet(prefix=PREFIX, subnet="198.18.3.0/24", home=tmp_path)
    namespaces_before, links_before = _namespaces(), _links()
    try:
        fleet.up(3)
        first_pids = [h["sshd_pid"] for h in fleet.status()["hosts"]]
        assert _namespaces() == {"wly-h0", "wly-h1", "wly-h2"}
        assert _links() == {"wly-br0", "wly-h0", "wly-h1", "wly-h2"}
        fleet.up(3)  # idempotent: same sshd processes, nothing duplicated
        assert [h["sshd_pid"] for h in fleet.status()["hosts"]] == first_pids
        fleet.up(2)  # shrinking removes the extra host
        assert [h["name"] for h in fleet.status()["hosts"]] == ["h0", "h1"]
        inventory = load_inventory(fleet.inventory_path)
        assert [h.address for h in inventory.hosts] == ["198.18.3.10", "198.18.3.11"]
        fleet.down()
        assert _namespaces() == namespaces_before
        assert _links() == links_before
        assert not fleet.directory.exists()
        assert all(not _pid_alive(pid) for pid in first_pids)
        fleet.down()  # safe to run twice
        fleet.up(2)
        status = fleet.status()
        assert all(h["ssh_port_open"] for h in status["hosts"]) and status["bridge_exists"]
    finally:
        fleet.down()
    assert _namespaces() == namespaces_before and _links() == links_before


def test_fleet_cli_status_json(local_fleet, wanlab):
    result = wanlab("fleet", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert [h["name"] for h in status["hosts"]] == ["h0", "h1", "h2", "h3"]
    assert all(h["ssh_port_open"] and h["sshd_pid"] for h in status["hosts"])


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def test_the_arp_table_has_room_for_a_full_mesh_and_is_never_shrunk():
    sysctls = Path("/proc/sys/net/ipv4/neigh/default")
    before = {name: int((sysctls / name).read_text()) for name in ("gc_thresh1", "gc_thresh3")}
    netns.make_room_for_neighbours(30)
    assert int((sysctls / "gc_thresh3").read_text()) >= max(2 * 30 * 30, before["gc_thresh3"])
    netns.make_room_for_neighbours(2)
    assert int((sysctls / "gc_thresh3").read_text()) >= 2 * 30 * 30
    assert int((sysctls / "gc_thresh1").read_text()) >= before["gc_thresh1"]
