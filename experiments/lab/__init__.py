"""The local lab: the local fleet, plus a delay node where this kernel cannot shape.

On a kernel with sch_netem every host shapes its own interface (`host`). On one without it, the
hosts' links run through a user-mode Linux delay node that shapes each host's egress for it
(`delay-node`); `auto` picks whichever this machine supports.

This module is the lab's one entry point: `up`, `down`, `status`, `provision_kernel`, and what
the command line needs to read `-i local` (`inventory_path`, `refresh_inventory`, `node_kernel`).
Its parts: the fleet's layout and inventory (fleet.py) on namespaces (netns.py) with a real
sshd each (sshd.py); the delay node booted (node.py) on the lab's user-mode Linux kernel
(kernel.py, chosen by kernelfetch.py) and serving inside it (nodeserve.py); a command run in
that kernel (guest.py, for tests); `wanlab demo` (demo.py). Nothing in inventory/ or netem/
imports the lab.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

from experiments.lab import kernel, kernelfetch
from experiments.lab.fleet import LocalFleet
from experiments.lab.node import KERNEL_FILE, DelayNode
from inventory.errors import ConfigError
from inventory.loader import load_inventory
from inventory.models import Fleet
from inventory.tomlfile import read_json
from netem.fleet import FleetNetem
from netem.profile import parse_profile
from netem.shaper import netem_available

LOCAL = "local"
"""What `-i` says for the local fleet's inventory."""
SHAPING_MODES = ("auto", "host", "delay-node")
FORWARDING_PROBE_DELAYS_MS = (0.5, 1.0, 2.0, 5.0, 10.0)
FORWARDING_ROUND_TRIPS = 100
FORWARDING_ROUNDS = 3


def check_shaping(shaping: str) -> None:
    """Refuse a `--shaping` that is not one of SHAPING_MODES."""
    if shaping not in SHAPING_MODES:
        raise ConfigError(None, "--shaping", f"must be one of {', '.join(SHAPING_MODES)}")


def resolve_shaping(shaping: str) -> str:
    """`host` or `delay-node` for `auto`, by what this kernel and machine can do."""
    check_shaping(shaping)
    if shaping != "auto":
        return shaping
    return "host" if netem_available() else "delay-node"


def up(n_hosts: int, shaping: str = "auto", fleet: LocalFleet | None = None) -> Path:
    """Bring up the local fleet (and its delay node if needed); return its inventory path.
    If any part fails, everything the lab had is removed before the error goes on."""
    fleet = fleet or LocalFleet()
    check_shaping(shaping)  # bad input touches nothing: checked before any teardown
    fleet.check_size(n_hosts)
    mode = resolve_shaping(shaping)
    if mode == "host":
        if fleet.topology == "delay-node":
            down(fleet)
        return _or_clean_up(fleet, lambda: fleet.up(n_hosts, topology="bridge"))
    node = DelayNode(fleet.node_directory)
    if node.pid() is not None and len(fleet.existing_hosts()) != n_hosts:
        node.stop()  # the node's interfaces are fixed at boot: a new size needs a new node

    def up() -> Path:
        inventory = fleet.up(n_hosts, topology="delay-node")
        starting = node.pid() is None
        if starting:
            node.start(fleet.taps(n_hosts))
        fleet.wait_ready(timeout=30)
        if starting:
            node.record_forwarding(measure_forwarding(load_inventory(inventory)))
        return inventory

    return _or_clean_up(fleet, up)


def _or_clean_up(fleet: LocalFleet, bring_up: Callable[[], Path]) -> Path:
    try:
        return bring_up()
    except BaseException:
        down(fleet)
        raise


def measure_forwarding(inventory: Fleet) -> dict:
    """The delay node's own one-way latency under netem, at a few delays. A profile's "1 ms
    one-way" means a round trip of 2 ms between two shaped hosts, as on a fleet whose own network
    adds ~0.1 ms; the node adds a few tenths of a millisecond of its own, more at some delays
    than at others (its timers), so it takes what it adds at each delay out of every delay it
    applies. Measured per delay as (median round trip between two hosts - 2 x delay) / 2, with
    that pure delay on every host."""
    if len(inventory.hosts) < 2:
        return {"one_way_ms_at_delay": {}, "how": "not measured: it takes two hosts"}
    pair = (inventory.hosts[0].name, inventory.hosts[1].name)
    rounds: dict[float, list[float]] = {delay_ms: [] for delay_ms in FORWARDING_PROBE_DELAYS_MS}
    with FleetNetem(inventory) as netem:
        netem.probe(pairs=[pair], seconds=0, count=FORWARDING_ROUND_TRIPS)  # a freshly booted
        try:  # node is slower for a moment; rounds interleaved, so one slow moment is outvoted
            for _ in range(FORWARDING_ROUNDS):
                for delay_ms, seen in rounds.items():
                    netem.apply(parse_profile(f"{delay_ms}ms"), lease_s=120)
                    rtt = netem.probe(pairs=[pair], seconds=0, count=FORWARDING_ROUND_TRIPS)[0]
                    seen.append(rtt["rtt_ms_median"] / 2 - delay_ms)
        finally:
            netem.reset()
    return {
        "one_way_ms_at_delay": {
            delay_ms: round(max(0.0, statistics.median(seen)), 3)
            for delay_ms, seen in rounds.items()
        },
        "how": f"{pair[0]}<->{pair[1]}: (median of {FORWARDING_ROUND_TRIPS} round trips "
        f"- 2 x delay) / 2 with that one-way delay on every host, the median of "
        f"{FORWARDING_ROUNDS} interleaved rounds",
    }


def down(fleet: LocalFleet | None = None) -> None:
    """Stop the delay node (if any) and remove the local fleet."""
    fleet = fleet or LocalFleet()
    DelayNode(fleet.node_directory).stop()
    fleet.down()


def status(fleet: LocalFleet | None = None) -> dict:
    """The local fleet's status, with the delay node's PID and the kernel the node boots."""
    fleet = fleet or LocalFleet()
    node_pid = DelayNode(fleet.node_directory).pid()
    return {**fleet.status(), "delay_node_pid": node_pid, "node_kernel": kernel.describe()}


def provision_kernel(refresh: bool = False) -> dict:
    """Make sure the lab has a user-mode Linux kernel that boots here; the record of the choice
    (kernelfetch.provision)."""
    return kernelfetch.provision(refresh=refresh)


def inventory_path(fleet: LocalFleet | None = None) -> Path:
    """The local fleet's inventory file (what `-i local` reads); ConfigError when it is not up."""
    path = (fleet or LocalFleet()).inventory_path
    if not path.is_file():
        raise ConfigError(LOCAL, None, "the local fleet is not up; run `wanlab fleet up`")
    return path


def refresh_inventory(fleet: LocalFleet | None = None) -> None:
    """Write the local fleet's inventory again (after `deploy` gave its hosts environments)."""
    (fleet or LocalFleet()).refresh_inventory()


def node_kernel(fleet: Fleet) -> dict | None:
    """For a fleet shaped by a delay node: the kernel the node boots and why (the node's
    `kernel.json` in its mailbox, written when it starts), else None."""
    if fleet.delay_node is None:
        return None
    path = fleet.delay_node.mailbox / KERNEL_FILE
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
    described = value.get("kernel")
    return described is None or (
        isinstance(described, str) and isinstance(value.get("version"), str)
    )
