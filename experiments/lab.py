"""The local lab: the local fleet, plus a delay node where this kernel cannot shape.

On a kernel with sch_netem every host shapes its own interface (`host`). On one without it, the
hosts' links run through a user-mode Linux delay node that shapes each host's egress for it
(`delay-node`); `auto` picks whichever this machine supports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from inventory.localfleet import LocalFleet
from netem import kernel
from netem.delaynode import DelayNode
from netem.shaper import netem_available

SHAPING_MODES = ("auto", "host", "delay-node")


def resolve_shaping(shaping: str) -> str:
    """`host` or `delay-node` for `auto`, by what this kernel and machine can do."""
    if shaping not in SHAPING_MODES:
        raise ValueError(f"shaping must be one of {', '.join(SHAPING_MODES)}")
    if shaping != "auto":
        return shaping
    return "host" if netem_available() else "delay-node"


def lab_up(n_hosts: int, shaping: str = "auto", fleet: LocalFleet | None = None) -> Path:
    """Bring up the local fleet (and its delay node if needed); return its inventory path.
    If any part fails, everything the lab had is removed before the error goes on."""
    fleet = fleet or LocalFleet()
    mode = resolve_shaping(shaping)
    if mode == "host":
        if fleet.topology == "delay-node":
            lab_down(fleet)
        return _or_clean_up(fleet, lambda: fleet.up(n_hosts, topology="bridge"))
    node = DelayNode(fleet.node_directory)
    if node.pid() is not None and len(fleet.existing_hosts()) != n_hosts:
        node.stop()  # the node's interfaces are fixed at boot: a new size needs a new node

    def up() -> Path:
        inventory = fleet.up(n_hosts, topology="delay-node")
        node.start(fleet.taps(n_hosts))
        fleet.wait_ready(timeout=30)
        return inventory

    return _or_clean_up(fleet, up)


def _or_clean_up(fleet: LocalFleet, bring_up: Callable[[], Path]) -> Path:
    try:
        return bring_up()
    except BaseException:
        lab_down(fleet)
        raise


def lab_down(fleet: LocalFleet | None = None) -> None:
    """Stop the delay node (if any) and remove the local fleet."""
    fleet = fleet or LocalFleet()
    DelayNode(fleet.node_directory).stop()
    fleet.down()


def lab_status(fleet: LocalFleet | None = None) -> dict:
    """The local fleet's status, with the delay node's PID and the kernel the node boots."""
    fleet = fleet or LocalFleet()
    node_pid = DelayNode(fleet.node_directory).pid()
    return {**fleet.status(), "delay_node_pid": node_pid, "node_kernel": kernel.describe()}
