"""`inventory check`: reach every host over SSH and report what it is and what it can do."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.ssh import FleetSSH
from inventory.tomlfile import read_json

FACTS_SCRIPT = (Path(__file__).parent / "host_facts.py").read_text()
ROUND_TRIPS = 3


def check_fleet(fleet: Fleet, timeout: float = 20.0) -> list[dict]:
    """One report per host: reachable, SSH round trip, versions, interface, qdisc support."""
    peers = {host.name: _peer_of(fleet, host.name) for host in fleet.hosts}
    with FleetSSH(fleet) as ssh:
        facts = ssh.run(
            lambda host: [host.python, "-c", FACTS_SCRIPT, peers[host.name], host.interface or ""],
            timeout=timeout,
        )
        round_trips: dict[str, list[float]] = {name: [] for name in facts}
        for _ in range(ROUND_TRIPS):
            reachable = [name for name, result in facts.items() if result.exit_code is not None]
            if not reachable:
                break
            for name, result in ssh.run(["true"], timeout=timeout, hosts=reachable).items():
                if result.ok:
                    round_trips[name].append(result.seconds * 1000)
    node_kernel = node_kernel_of(fleet)
    reports = []
    for host in fleet.hosts:
        result = facts[host.name]
        report = {
            "name": host.name,
            "address": host.address,
            "reachable": result.exit_code is not None,
            "shaped_on": "delay node" if fleet.delay_node is not None else "host",
        }
        if node_kernel is not None:
            report["node_kernel"] = node_kernel
        samples = round_trips[host.name]
        report["ssh_rtt_ms"] = round(statistics.median(samples), 2) if samples else None
        if result.ok:
            report.update(json.loads(result.stdout.strip().splitlines()[-1]))
        else:
            report["error"] = result.error or (result.stderr.strip() or f"exit {result.exit_code}")
        reports.append(report)
    return reports


def node_kernel_of(fleet: Fleet) -> dict | None:
    """For a fleet shaped by a delay node: the kernel the node boots and why (the node's
    `kernel.json` in its mailbox, written when it starts), else None."""
    if fleet.delay_node is None:
        return None
    path = fleet.delay_node.mailbox / "kernel.json"
    if not os.path.lexists(path):
        return {"kernel": None, "reason": "the delay node has not started (no kernel.json)"}
    try:
        described = read_json(path)
    except ConfigError as error:
        return {"kernel": None, "reason": str(error)}
    if not _is_description(described):
        return {"kernel": None, "reason": f"{path}: not what a delay node writes"}
    return described


def _is_description(value) -> bool:
    """What a delay node writes to kernel.json: a reason, and a kernel (None, or its package
    with its version)."""
    if not isinstance(value, dict) or not isinstance(value.get("reason"), str):
        return False
    kernel = value.get("kernel")
    return kernel is None or (isinstance(kernel, str) and isinstance(value.get("version"), str))


def _peer_of(fleet: Fleet, name: str) -> str:
    others = [host.address for host in fleet.hosts if host.name != name]
    return others[0] if others else fleet.host(name).address
