"""`inventory check`: reach every host over SSH and report what it is and what it can do."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from inventory.models import Fleet
from inventory.ssh import FleetSSH

FACTS_SCRIPT = (Path(__file__).parent / "host_facts.py").read_text()
ROUND_TRIPS = 3


def check_fleet(fleet: Fleet, timeout: float = 20.0, node_kernel: dict | None = None) -> list[dict]:
    """One report per host: reachable, SSH round trip, versions, interface, qdisc support; and
    `node_kernel`, what the caller knows of the kernel the fleet's delay node boots, if given."""
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


def _peer_of(fleet: Fleet, name: str) -> str:
    others = [host.address for host in fleet.hosts if host.name != name]
    return others[0] if others else fleet.host(name).address
