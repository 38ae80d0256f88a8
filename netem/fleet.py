"""Fleet-wide netem: apply / show / reset / renew / probe on every host in parallel.

The controller resolves each host's tree here and sends it, as an agent request (see
`netem.agent`), to whichever agent shapes that host: the host's own persistent agent
(`python -m netem.agentserve` over SSH, netem/served.py) or, on a fleet with a delay node, the
node's agent behind its mailbox (netem/mailbox.py). Both answer `call(requests)`; probes and
the hosts' TCP settings (`netem.tcp`, which belong to the host, not to its link) always go to
the hosts' own agents. The agent's code travels as one zip file per host (Python imports
packages from a zip), so hosts only need Python with pyroute2 and pydantic.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError, HostsUnreachable
from inventory.models import Fleet, Host
from inventory.ship import ship_code
from inventory.ssh import FleetSSH
from netem.agent import DEFAULT_LEASE_S
from netem.mailbox import MailboxAgent
from netem.pairs import PairMatrix, is_pair_matrix_document, load_pair_matrix_file
from netem.probe import DEFAULT_PORT
from netem.profile import Profile, load_profile_file, parse_profile
from netem.served import Requests, ServedAgents
from netem.tcp import TcpSettings
from netem.tree import Tree, less_forwarding_delay, tc_commands, tree_for_profile, tree_for_routes

TCP_CONTROL_KINDS = ("available", "allowed", "loadable")
TCP_SETTINGS_SHOWN = ("rmem", "wmem", "adv_win_scale", "slow_start_after_idle", "initcwnd")


def controller_identity() -> str:
    """Who this controller is, as the hosts' agents record it: user@machine."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


Target = Profile | PairMatrix
# What runs on a host (the agent, its shaper and probes) and what those import; nothing else,
# so a host needs no copy of wanlab (tests/test_ship.py imports each from the zip alone).
AGENT_CODE = tuple(
    [f"netem/{name}.py" for name in ("__init__", "agent", "agentserve", "leases", "pairs", "probe",
                                     "profile", "shaper", "tcp", "tree", "units")]
    + [f"inventory/{name}.py" for name in ("__init__", "errors", "names", "ports", "tomlfile")]
)  # fmt: skip


def load_target(spec: str) -> Target:
    """A profile name / short form, or a TOML file holding a profile or a pair matrix."""
    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # a name too long to be a file is a profile (or nothing)
        is_file = False
    if spec.endswith(".toml") or is_file:
        if not is_file:
            there = os.path.lexists(path)
            raise ConfigError(
                spec, None, "is not a file" if there else "no such profile or matrix file"
            )
        return (
            load_pair_matrix_file(path)
            if is_pair_matrix_document(path)
            else load_profile_file(path)
        )
    return parse_profile(spec, source="profile")


def trees_for(target: Target, hosts: list[Host], exempt_ssh: bool = True) -> dict[str, Tree | None]:
    """Each host's tree; None where the host stays unshaped (the default profile, empty rows)."""
    if isinstance(target, Profile):
        tree = None if target.is_default else tree_for_profile(target, exempt_ssh)
        return {host.name: tree for host in hosts}
    rows = target.resolve(hosts)
    return {name: tree_for_routes(row, exempt_ssh) if row else None for name, row in rows.items()}


def dry_run(fleet: Fleet, target: Target, exempt_ssh: bool = True) -> Requests:
    """The tc commands that applying `target` would run, per host; no host is contacted."""
    on_node = fleet.delay_node.interfaces if fleet.delay_node else None
    answers = {}
    for name, tree in trees_for(target, fleet.hosts, exempt_ssh).items():
        interface = on_node[name] if on_node else fleet.host(name).interface
        shown = interface or "IFACE"  # the host's default route's, found only on the host
        commands = [] if tree is None else tc_commands(tree, shown)
        answers[name] = {"ok": True, "dry_run": True, "interface": interface,
                         "commands": commands, "reset": tree is None}  # fmt: skip
    return answers


class FleetNetem:
    """One SSH session over the fleet with the agent shipped; use as a context manager.

    A session that ends (or dies) without a reset leaves every lease to run out: the agents
    then revert the hosts by themselves.
    """

    def __init__(self, fleet: Fleet, timeout_s: float = 60.0, owner: str | None = None):
        self.fleet = fleet
        self.timeout_s = timeout_s
        self.owner = owner or controller_identity()
        self.ssh = FleetSSH(fleet)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(fleet.hosts)))
        self.agents: ServedAgents | None = None
        self.node = MailboxAgent(fleet.delay_node.mailbox) if fleet.delay_node else None
        self.shapers: ServedAgents | MailboxAgent | None = self.node

    def __enter__(self) -> FleetNetem:
        try:
            code = ship_code(self.ssh, self.fleet, AGENT_CODE, "wanlab-netem")
            self.agents = ServedAgents(self.ssh, code, self._pool)
            self.shapers = self.shapers or self.agents
            # Every host's agent starts now, so no later step (a cell's first probe) pays for it.
            failed = self.agents.start([host.name for host in self.fleet.hosts], self.timeout_s)
            if failed:
                raise HostsUnreachable("the agent did not start", failed)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.agents is not None:
            self.agents.close()
        self.ssh.close()
        self._pool.shutdown()

    def _shape(
        self, verb: str, names: list[str] | None = None, timeout_s: float | None = None,
        trees: dict[str, Tree] | None = None, **fields: Any,
    ) -> Requests:  # fmt: skip
        """Send `verb` (with each host's tree, if any) to the agents that shape `names`."""
        names = list(trees) if trees is not None else names
        if names is None:
            names = [host.name for host in self.fleet.hosts]
        forwarding = self.node.forwarding() if self.node is not None else None
        requests = {}
        for name in names:
            request = {"verb": verb, "owner": self.owner, **fields}
            if self.node is not None:
                request["interface"] = self.fleet.delay_node.interfaces[name]
            else:
                request["interface"] = self.fleet.host(name).interface
            if trees is not None:
                tree = trees[name]
                if forwarding is not None:  # the node's own latency is part of every delay
                    tree = less_forwarding_delay(tree, forwarding)
                request["tree"] = tree.model_dump(mode="json")
            requests[name] = request
        return self.shapers.call(requests, timeout_s or self.timeout_s)

    def apply(
        self,
        target: Target,
        lease_s: float = DEFAULT_LEASE_S,
        exempt_ssh: bool = True,
        names: list[str] | None = None,
    ) -> Requests:
        """Shape every host, or those of `names` (hosts with nothing to shape are reset); read
        back and lease.

        If any host fails, the hosts this call shaped are reset again, so the fleet is never
        left half-shaped.
        """
        trees = trees_for(target, self.fleet.hosts, exempt_ssh)
        if names is not None:
            trees = {name: tree for name, tree in trees.items() if name in names}
        shaped = {name: tree for name, tree in trees.items() if tree is not None}
        unshaped = [name for name, tree in trees.items() if tree is None]
        answers: Requests = {}
        if shaped:
            answers.update(self._shape("apply", trees=shaped, lease_s=lease_s))
        if unshaped:
            answers.update(self._shape("reset", unshaped))
        if not all(answer["ok"] for answer in answers.values()):
            applied = [n for n, a in answers.items() if a["ok"] and n in shaped]
            if applied:
                self._shape("reset", applied)
                for name in applied:
                    answers[name]["rolled_back"] = True
        return dict(sorted(answers.items()))

    def show(self, names: list[str] | None = None) -> Requests:
        """What every host's (or `names'`) kernel holds, with counters and lease."""
        return self._shape("show", names)

    def reset(self, force: bool = False) -> Requests:
        """Restore every host's interface, and the TCP settings wanlab changed, to what they
        were before wanlab; safe to repeat. What another owner holds is left alone unless
        `force`. A host whose TCP settings could not be restored answers `ok` false."""
        answers = self._shape("reset", force=force)
        for name, answer in self._tcp("tcp-reset", force=force).items():
            answers[name]["tcp"] = answer.get("result")
            if not answer["ok"]:
                answers[name].update(ok=False, error=f"TCP settings: {answer['error']}")
        return answers

    def _tcp(
        self, verb: str, names: list[str] | None = None, timeout_s: float | None = None,
        **fields: Any,
    ) -> Requests:  # fmt: skip
        """Send a `tcp-*` verb to the own agents of `names` (default: every host)."""
        if names is None:
            names = [host.name for host in self.fleet.hosts]
        requests = {
            name: {"verb": verb, "owner": self.owner, "interface": self.fleet.host(name).interface,
                   **fields}
            for name in names
        }  # fmt: skip
        return self.agents.call(requests, timeout_s or self.timeout_s)

    def apply_tcp(
        self,
        settings: TcpSettings,
        lease_s: float = DEFAULT_LEASE_S,
        names: list[str] | None = None,
    ) -> Requests:
        """Set every host's (or `names'`) TCP settings under a lease and read them back; if any
        host fails, the others are put back too."""
        fields = {"tcp": settings.model_dump(mode="json", exclude_none=True), "lease_s": lease_s}
        answers = self._tcp("tcp-apply", names, **fields)
        applied = [name for name, answer in answers.items() if answer["ok"]]
        if len(applied) < len(answers) and applied:
            self._tcp("tcp-reset", applied)
            for name in applied:
                answers[name]["rolled_back"] = True
        return answers

    def show_tcp(self, names: list[str] | None = None) -> Requests:
        """Every host's (or `names'`) TCP settings as they are, and its congestion controls."""
        return self._tcp("tcp-show", names)

    def tcp_facts(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every host's (or `names'`) TCP settings and congestion controls as one flat record,
        as `inventory check` shows them and run.json keeps them; `{"error": …}` for a host
        whose agent could not read them."""
        facts = {}
        for name, answer in self.show_tcp(names).items():
            if not answer.get("ok"):
                facts[name] = {"error": answer.get("error")}
                continue
            settings, controls = answer["tcp"], answer["congestion_controls"]
            facts[name] = {
                "congestion_control": settings["congestion_control"],
                **{f"{kind}_congestion_control": controls[kind] for kind in TCP_CONTROL_KINDS},
                "machines_namespace": controls["machines_namespace"],
                **{key: settings[key] for key in TCP_SETTINGS_SHOWN},
                "mtu": answer.get("mtu"),
            }
        return facts

    def held_by_others(self) -> dict[str, str]:
        """Hosts whose shaping another owner holds now, with who and for how long."""
        answers = self.show()
        return {
            name: a["held_by_another"] for name, a in answers.items() if a.get("held_by_another")
        }

    def renew(
        self,
        lease_s: float = DEFAULT_LEASE_S,
        names: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> Requests:
        """Extend every host's (or `names`') lease to `lease_s` seconds from now."""
        return self._shape("renew", names, timeout_s, lease_s=lease_s)

    def heartbeat(
        self, lease_s: float, names: list[str], tcp_names: list[str] | None = None
    ) -> Heartbeat:
        """Start renewing the shaping leases of `names` (and the TCP settings' of `tcp_names`)
        every `lease_s` / 3 seconds; `stop()` it before the reset. If this process dies, the
        renewals stop and the hosts revert within `lease_s`. A host that does not answer a
        renewal within a period is given up on for that beat, so one lost host never holds
        up the others' renewals."""
        period_s = lease_s / 3

        def renew() -> None:
            if names:
                self.renew(lease_s, names, timeout_s=period_s)
            if tcp_names:
                self._tcp("tcp-renew", tcp_names, timeout_s=period_s, lease_s=lease_s)

        return Heartbeat(renew, period_s)

    def probe(
        self,
        pairs: list[tuple[str, str]] | None = None,
        seconds: float = 3.0,
        count: int = 50,
        port: int = DEFAULT_PORT,
        receive_share: bool = True,
    ) -> list[dict[str, Any]]:
        """RTT, throughput and (if `receive_share`, with throughput) the receiver's receive
        share for each (src, dst) pair, one pair at a time (default: a ring).

        The probe runs inside the hosts' agents: no process is started or stopped per pair."""
        names = [host.name for host in self.fleet.hosts]
        if pairs is None:
            pairs = [(a, b) for a, b in zip(names, names[1:] + names[:1], strict=True) if a != b]
        address = {host.name: host.address for host in self.fleet.hosts}
        serve = {dst: {"verb": "probe-serve", "bind": address[dst], "port": port}
                 for dst in sorted({dst for _, dst in pairs})}  # fmt: skip
        listening = self.agents.call(serve, self.timeout_s)
        out = []
        for src, dst in pairs:
            if listening[dst].get("ok"):
                measure = {"verb": "probe-measure", "to": address[dst], "port": port,
                           "count": count, "seconds": seconds,
                           "receive_share": receive_share}  # fmt: skip
                answer = self.agents.call({src: measure}, self.timeout_s + seconds)[src]
            else:
                answer = listening[dst]
            answer = {key: value for key, value in answer.items() if key != "host"}
            out.append({**answer, "src": src, "dst": dst})
        return out


class Heartbeat:
    """Calls `renew` every `period_s` seconds in a thread until stopped."""

    def __init__(self, renew, period_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(renew, period_s), name="lease-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self, renew, period_s: float) -> None:
        while not self._stop.wait(period_s):
            renew()  # a host that misses a renewal reverts when its lease runs out

    def stop(self) -> None:
        """Stop renewing (waits for a renewal in flight)."""
        self._stop.set()
        self._thread.join()
