"""The SSH layer and `inventory check` against real sshd processes in namespaces."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import tomllib

import paramiko
import pytest
import tomli_w

from experiments.cli.inventory import NOT_DEPLOYED
from inventory.loader import load_inventory
from inventory.ssh import FleetSSH
from inventory.sshconfig import load_ssh_config


def test_check_reports_every_host(local_fleet, wanlab):
    result = wanlab("inventory", "check", "-i", "local", "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["name"] for r in reports] == ["h0", "h1", "h2", "h3"]
    for report in reports:
        assert report["reachable"] and report["hostname"] == report["name"]
        assert report["interface"] == "eth0" and report["interface_exists"]
        assert report["kernel"] == os.uname().release
        assert report["ssh_rtt_ms"] > 0
        netns = {host.name: host.netns for host in local_fleet.existing_hosts()}[report["name"]]
        allowed = ["ip", "netns", "exec", netns, "sysctl", "-n",
                   "net.ipv4.tcp_allowed_congestion_control"]  # fmt: skip
        assert (
            report["tcp"]["allowed_congestion_control"]
            == subprocess.run(allowed, capture_output=True, text=True, check=True).stdout.split()
        )
        assert report["tcp"]["machines_namespace"] is False
        # The kernel's own answer, read independently of the check script:
        assert report["htb"] is _kernel_accepts("htb") and report["tbf"] is True
        assert report["netem"] is _kernel_accepts("netem", "delay", "1ms")


def _kernel_accepts(kind: str, *options: str) -> bool:
    """Ask this (the hosts') kernel directly, in a throwaway namespace, with the tc command."""
    trial = ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", kind, *options]
    return subprocess.run(trial, capture_output=True).returncode == 0


def test_each_host_runs_in_its_own_namespace(local_fleet):
    fleet = load_inventory(local_fleet.inventory_path)
    with FleetSSH(fleet) as ssh:
        results = ssh.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    for host in fleet.hosts:
        assert results[host.name].ok
        assert f"inet {host.address}/24" in results[host.name].stdout


def test_arguments_are_quoted_not_interpreted(local_fleet):
    tricky = "a b; echo injected $HOME 'q' \"dq\" `id`"
    with FleetSSH(load_inventory(local_fleet.inventory_path)) as ssh:
        results = ssh.run(["printf", "%s", tricky], env={"X": "1 2"})
    assert {r.stdout for r in results.values()} == {tricky}


def test_connections_send_without_waiting_for_acks(local_fleet):
    """Nagle's algorithm is off on every connection (the kernel's own answer): with it on, each
    command's last small message waited for the host's delayed ACK, about 40 ms."""
    fleet = load_inventory(local_fleet.inventory_path)
    with FleetSSH(fleet) as ssh:
        assert all(r.ok for r in ssh.run(["true"]).values())
        sockets = [c.client.get_transport().sock for c in ssh._connections.values()]
        assert len(sockets) == len(fleet.hosts)
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


def test_per_host_commands_and_upload(local_fleet, tmp_path):
    fleet = load_inventory(local_fleet.inventory_path)
    payload = tmp_path / "payload.txt"
    payload.write_text("wanlab upload\n")
    with FleetSSH(fleet) as ssh:
        uploaded = ssh.put(payload, f"/run/payload-{os.getpid()}.txt")
        assert all(r.ok for r in uploaded.values())
        read = ssh.run(lambda host: ["sh", "-c", f"cat /run/payload-{os.getpid()}.txt; hostname"])
    for name, result in read.items():
        # /run is private per host: each host got its own copy
        assert result.stdout.split("\n")[:2] == ["wanlab upload", name]


def test_wrong_host_key_is_rejected(local_fleet, tmp_path):
    fleet = load_inventory(local_fleet.inventory_path)
    other = tmp_path / "known_hosts"
    lines = local_fleet.known_hosts.read_text().splitlines()
    keys = [line.split(" ", 1)[1] for line in lines]
    other.write_text("\n".join(f"{line.split()[0]} {keys[-1 - i]}" for i, line in enumerate(lines)))
    wrong = fleet.model_copy(update={"known_hosts": other})
    with FleetSSH(wrong) as ssh:
        results = ssh.run(["true"])
    assert not any(r.ok for r in results.values())
    assert all("BadHostKeyException" in r.error for r in results.values()), results


def test_stopped_sshd_is_unreachable_others_answer(local_fleet, wanlab):
    victim = local_fleet.host(2)
    pid = victim.sshd.pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 5
        while victim.sshd.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        result = wanlab("inventory", "check", "-i", "local", "--json", "--timeout", "5")
        assert result.returncode == 1
        reports = {r["name"]: r for r in json.loads(result.stdout)}
        assert (
            not reports["h2"]["reachable"] and "unable to connect" in reports["h2"]["error"].lower()
        )
        assert all(reports[name]["reachable"] for name in ("h0", "h1", "h3"))
    finally:
        local_fleet.up(4)
    assert local_fleet.host(2).sshd.pid() is not None


def test_strict_host_keys_reject_unknown_host(local_fleet, tmp_path):
    fleet = load_inventory(local_fleet.inventory_path)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with FleetSSH(fleet.model_copy(update={"known_hosts": empty})) as ssh:
        results = ssh.run(["true"])
    assert all(not r.ok and "not found in known_hosts" in r.error for r in results.values())


def test_proxy_jump_reaches_h1_through_h0(local_fleet, tmp_path):
    """h1 as an SSH client configuration names it, with h0 as its ProxyJump: the command runs
    on h1, its SSH connection comes from h0's address, and it rides a channel of h0's."""
    fleet = load_inventory(local_fleet.inventory_path)
    h0, h1 = fleet.hosts[0], fleet.hosts[1]
    config = tmp_path / "config"
    config.write_text(
        f"Host jump\n  HostName {h0.address}\n"
        f"Host target\n  HostName {h1.address}\n  ProxyJump jump\n"
        f"Host *\n  User {h1.user}\n  IdentityFile {h1.key_file}\n"
    )
    behind = load_ssh_config(config, "target").model_copy(update={"known_hosts": fleet.known_hosts})
    assert behind.hosts[0].jump.address == h0.address
    with FleetSSH(behind) as ssh:
        result = ssh.run(["sh", "-c", "hostname; echo $SSH_CONNECTION"])["target"]
        assert result.ok, result.error
        name, connection = result.stdout.split("\n")[:2]
        assert name == "h1" and connection.split()[0] == h0.address
        assert isinstance(ssh._connections["target"].transport.sock, paramiko.Channel)


def test_the_users_ssh_config_does_not_redirect_a_host(local_fleet, tmp_path, monkeypatch):
    """The inventory is the one description of a host: an SSH client configuration in the
    user's home (which the SSH library would otherwise read when connecting) must neither
    change a host's address nor run its ProxyCommand."""
    marker = tmp_path / "ran"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        f"Host *\n  HostName 198.18.255.254\n  Port 1\n  ProxyCommand touch {marker}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    fleet = load_inventory(local_fleet.inventory_path)
    with FleetSSH(fleet) as ssh:
        results = ssh.run(["hostname"])
    assert {name: r.stdout.strip() for name, r in results.items() if r.ok} == {
        name: name for name in fleet.names
    }
    assert not marker.exists()


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    subprocess.run([SYSTEM_PYTHON, "-c", "import pyroute2"], capture_output=True).returncode == 0,
    reason="needs a python without pyroute2 (a host wanlab is not deployed on)",
)
def test_check_says_which_host_needs_wanlab_deployed(local_fleet, wanlab, tmp_path):
    """A host's TCP settings are read by its agent; a host whose python has no pyroute2 cannot
    run it and says it needs `wanlab deploy`, while the others are read all the same."""
    document = tomllib.loads(local_fleet.inventory_path.read_text())
    document["hosts"][1]["python"] = SYSTEM_PYTHON
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(tomli_w.dumps(document))
    result = wanlab("inventory", "check", "-i", str(inventory), "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert reports[1]["pyroute2"] is None and reports[1]["tcp"] == {"error": NOT_DEPLOYED}
    for report in reports[:1] + reports[2:]:
        assert report["tcp"]["allowed_congestion_control"] and "error" not in report["tcp"]
