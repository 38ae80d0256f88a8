"""Inside the delay node: bridge the hosts' links, redirect each host's egress through its ifb,
and answer the mailbox's requests with the agent (`python -m experiments.lab.nodeserve FOLDER N`).

Host i's link ends in a tap that the node sees as `vec<i>`; the node bridges all of them (and
the controller's tap, the last), and redirects what arrives on `vec<i>` (host i's egress)
through `ifb<i>`. Shaping host i means building on `ifb<i>` exactly the tree that would sit on
host i's own interface, with the same agent code: the node answers every request it receives
with its own `netem.agent.Agent`. The loop also holds the leases (a watchdog process would cost
the node's single CPU seconds of start-up at every apply, stalling the very packets it
forwards).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pyroute2 import IPRoute

from netem.agent import Agent
from netem.mailbox import POLL_S, READY_FILE, REQUESTS, RESPONSES, STOP_FILE
from netem.profile import parse_profile
from netem.tree import tree_for_profile

BRIDGE = "br0"
IDLE_POLL_S = 0.1
QUEUE_PACKETS = 1000
"""Queue length of the node's interfaces when nothing shapes them (an Ethernet device's
default). An ifb's own is 32 packets: unshaped, the node dropped a quarter of a bulk
transfer's segments there (64 MiB between two hosts: 12,397 retransmitted), and TCP then
crawled through retransmission timeouts."""
BUSY_WINDOW_S = 0.2
"""After BUSY_WINDOW_S without a request the node looks for one only every IDLE_POLL_S: each
look is a few hostfs calls, which hold up the node's single CPU and so its packets (polling
every 10 ms all the time made the round trip through the node wander by up to 1-4 ms)."""


def host_vec(index: int) -> str:
    """The node's interface facing host `index`."""
    return f"vec{index}"


def host_ifb(index: int) -> str:
    """The node's interface that carries host `index`'s egress, where its shaping is built."""
    return f"ifb{index}"


def _set_up_forwarding(n_vecs: int) -> list[dict]:
    """Bridge every vector interface; redirect each host's ingress through its ifb."""
    hosts = []
    with IPRoute() as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        bridge = ipr.link_lookup(ifname=BRIDGE)[0]
        for index in range(n_vecs):
            vec = ipr.link_lookup(ifname=host_vec(index))[0]
            ipr.link("set", index=vec, txqlen=QUEUE_PACKETS)
            ipr.link("set", index=vec, master=bridge, state="up")
        ipr.link("set", index=bridge, state="up")
        for index in range(n_vecs - 1):  # the last vector interface is the controller's
            vec = ipr.link_lookup(ifname=host_vec(index))[0]
            ifb = ipr.link_lookup(ifname=host_ifb(index))[0]
            ipr.link("set", index=ifb, txqlen=QUEUE_PACKETS)  # before up: the default qdisc
            ipr.link("set", index=ifb, state="up")  # takes its length from it
            ipr.tc("add", "ingress", vec, 0xFFFF0000)
            ipr.tc(
                "add-filter",
                "u32",
                vec,
                parent=0xFFFF0000,
                protocol=0x0003,
                prio=1,
                keys=["0x0/0x0+0"],
                target=0x10020,
                action={
                    "kind": "mirred",
                    "direction": "egress",
                    "action": "redirect",
                    "ifindex": ifb,
                },
            )
            hosts.append({"index": index, "vec": host_vec(index), "ifb": host_ifb(index)})
    return hosts


def _warm_up(agent: Agent, interface: str) -> None:
    """Shape and reset one of the node's own interfaces once before saying ready: a process's
    first apply costs twice a later one (imports, its netlink socket), and the first cell
    should not pay for that."""
    agent.apply(interface, tree_for_profile(parse_profile("1gbit")), lease_s=0)
    agent.reset(interface)


def serve(directory: Path, n_vecs: int) -> None:
    """Set up forwarding, then answer mailbox requests until the `stop` file appears."""
    hosts = _set_up_forwarding(n_vecs)
    requests, responses = directory / REQUESTS, directory / RESPONSES
    agent = Agent()  # its state folder is under the node's own /run
    _warm_up(agent, host_ifb(0))
    ready = {"hosts": hosts, "release": os.uname().release}  # the kernel that really runs
    (directory / READY_FILE).write_text(json.dumps(ready))
    last_request = time.monotonic()
    while True:
        try:
            if (directory / STOP_FILE).exists():
                return
            agent.revert_expired()
            pending = sorted(requests.glob("*.json"))
            if pending:
                last_request = time.monotonic()
            for request in pending:
                batch = json.loads(request.read_text())["batch"]
                staging = responses / f".{request.stem}.tmp"
                staging.write_text(json.dumps({"batch": [agent.handle(r) for r in batch]}))
                staging.rename(responses / request.name)
                request.unlink()
        except OSError as error:
            # hostfs can fail transiently under load; every request is idempotent, so the
            # loop simply tries again (a request whose answer was lost is answered again).
            print(f"delay node: {error}; retrying", file=sys.stderr, flush=True)
            time.sleep(0.1)
            continue
        if not pending:
            busy = time.monotonic() - last_request < BUSY_WINDOW_S
            time.sleep(POLL_S if busy else IDLE_POLL_S)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]))
