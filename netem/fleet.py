"""Fleet-wide netem: apply / show / reset / renew / probe on every host in parallel over SSH.

The controller resolves each host's tree here and ships it to `python -m netem.agent` on the
host. The agent's code travels as one zip file per host (Python imports packages from a zip),
so hosts only need Python with pyroute2 and pydantic.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from inventory.ship import ship_code
from inventory.ssh import FleetSSH, HostResult, Stream
from netem.agent import DEFAULT_LEASE_S
from netem.agentserve import MARK as AGENT_MARK
from netem.delaynode import DelayNode
from netem.matrix import PairMatrix, is_matrix_document, load_matrix_file
from netem.probe import DEFAULT_PORT
from netem.profile import Profile, load_profile_file, parse_profile
from netem.tree import Tree, less_forwarding_delay, tree_for_profile, tree_for_routes

Target = Profile | PairMatrix
AGENT_CODE = ("netem/*.py", "inventory/__init__.py", "inventory/errors.py", "inventory/ports.py")


def load_target(spec: str) -> Target:
    """A profile name / short form, or a TOML file holding a profile or a pair matrix."""
    path = Path(spec)
    if spec.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(spec, None, "no such profile or matrix file")
        return load_matrix_file(path) if is_matrix_document(path) else load_profile_file(path)
    return parse_profile(spec, source="profile")


def trees_for(target: Target, hosts: list[Host], exempt_ssh: bool = True) -> dict[str, Tree | None]:
    """Each host's tree; None where the host stays unshaped (the default profile, empty rows)."""
    if isinstance(target, Profile):
        tree = None if target.is_default else tree_for_profile(target, exempt_ssh)
        return {host.name: tree for host in hosts}
    rows = target.resolve(hosts)
    return {name: tree_for_routes(row, exempt_ssh) if row else None for name, row in rows.items()}


def _answer(result: HostResult) -> dict[str, Any]:
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        reason = result.error or result.stderr.strip()[-500:] or f"exit code {result.exit_code}"
        answer = {"ok": False, "error": reason, "error_kind": "transport"}
    answer["host"] = result.host
    answer["seconds"] = round(result.seconds, 3)
    return answer


class FleetNetem:
    """One SSH session over the fleet with the agent shipped; use as a context manager.

    Each command runs the agent afresh on every host (`python -m netem.agent`, which leaves a
    watchdog process per shaped interface to hold the lease) unless `persistent`: then every
    host keeps one `python -m netem.agentserve` for the whole session, which answers commands
    in a few milliseconds, probes in-process, and holds the leases itself (a session that dies
    still reverts the hosts when the leases run out). Experiment runs use the persistent form.
    """

    def __init__(self, fleet: Fleet, timeout_s: float = 60.0, persistent: bool = False):
        self.fleet = fleet
        self.timeout_s = timeout_s
        self.persistent = persistent
        self.ssh = FleetSSH(fleet)
        self.node = DelayNode(fleet.delay_node.mailbox) if fleet.delay_node else None
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(fleet.hosts)))
        self._code: dict[str, str] = {}
        self._agents: dict[str, Stream] = {}
        self.agent_pids: dict[str, int] = {}  # each persistent agent's PID on its host

    def __enter__(self) -> FleetNetem:
        self._ship()
        if self.persistent:  # on a delay-node fleet the hosts' agents only probe
            self._start_agents()
        return self

    def __exit__(self, *exc_info) -> None:
        for stream in self._agents.values():
            stream.close()
        self.ssh.close()
        self._pool.shutdown()

    def _start_agents(self) -> None:
        for host in self.fleet.hosts:
            argv = [host.python, "-m", "netem.agentserve"]
            self._agents[host.name] = self.ssh.open_stream(
                host.name, argv, {"PYTHONPATH": self._code[host.name]}
            )
        pending = {n: self._pool.submit(self._agent_line, n, self.timeout_s) for n in self._agents}
        ready = {name: future.result() for name, future in pending.items()}
        bad = {name: answer.get("error") for name, answer in ready.items() if "ready" not in answer}
        if bad:
            raise ConnectionError(f"the agent did not start on: {bad}")
        self.agent_pids = {name: answer["pid"] for name, answer in ready.items()}

    def _agent_line(self, name: str, timeout_s: float) -> dict:
        """The next protocol message of a host's agent, or {"error": …} if it ends or is silent."""
        try:
            message = self._agents[name].read_message(AGENT_MARK, timeout_s)
        except TimeoutError as error:
            return {"error": str(error)}
        return message if message is not None else {"error": "the agent ended"}

    def _stream_call(
        self, name: str, args: list[str], timeout_s: float | None = None
    ) -> HostResult:
        started = time.monotonic()
        self._agents[name].send_line(json.dumps({"argv": args}))
        reply = self._agent_line(name, timeout_s or self.timeout_s)
        seconds = time.monotonic() - started
        if "exit_code" not in reply:
            return HostResult(name, False, None, "", "", seconds, reply["error"])
        code = reply["exit_code"]
        return HostResult(name, code == 0, code, reply["stdout"], reply["stderr"], seconds)

    def _ship(self) -> None:
        self._code = ship_code(self.ssh, self.fleet, AGENT_CODE, "wanlab-netem")

    def _python(self, host: Host, module: str, *args: str) -> list[str]:
        env = ["env", f"PYTHONPATH={self._code[host.name]}"]
        return [*env, host.python, "-m", module, *args]

    def _run_agent(
        self,
        command: str,
        *args: str,
        trees: dict[str, Tree] | None = None,
        hosts: list[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run one agent command for every host (or `hosts`, or the hosts `trees` names).

        The agent runs on the host itself, over SSH; on a fleet with a delay node it runs on
        the node instead, against the node's interface that carries the host's egress.
        """
        names = list(trees) if trees is not None else hosts
        if names is None:
            names = [host.name for host in self.fleet.hosts]

        forwarding = self.node.forwarding() if self.node is not None else None

        def agent_args(host: Host, interface: str | None) -> list[str]:
            tree = trees[host.name] if trees else None
            if tree is not None and forwarding is not None:  # the node's own latency is part
                tree = less_forwarding_delay(tree, forwarding)  # of every delay it applies
            tree_args = ["--tree", tree.model_dump_json()] if tree is not None else []
            where = ["--interface", interface] if interface else []
            return [command, *where, *args, *tree_args]

        if self.node is not None:
            on_node = self.fleet.delay_node.interfaces
            commands = [agent_args(self.fleet.host(name), on_node[name]) for name in names]
            answers = self._node_calls(names, commands)
            return {name: {**answer, "shaped_on": "delay-node"} for name, answer in answers.items()}
        if self._agents:
            return self._each(names, self._stream_call, lambda h: agent_args(h, h.interface))

        def argv(host: Host) -> list[str]:
            return self._python(host, "netem.agent", *agent_args(host, host.interface))

        results = self.ssh.run(argv, timeout=self.timeout_s, hosts=names)
        return {name: _answer(result) for name, result in results.items()}

    def _each(self, names: list[str], call, args_of) -> dict[str, dict[str, Any]]:
        """`call(name, args)` for every host in parallel; each answer as parsed JSON."""
        futures = {n: self._pool.submit(call, n, args_of(self.fleet.host(n))) for n in names}
        return {name: _answer(future.result()) for name, future in futures.items()}

    def _node_calls(self, names: list[str], commands: list[list[str]]) -> dict[str, dict]:
        """Every host's command on the node, in one round trip; each answer as parsed JSON."""
        started = time.monotonic()
        replies = self.node.call(commands, self.timeout_s)
        seconds = time.monotonic() - started
        answers = {}
        for name, (code, out, err) in zip(names, replies, strict=True):
            error = None if code is not None else err
            answers[name] = _answer(HostResult(name, code == 0, code, out, err, seconds, error))
        return answers

    def apply(
        self,
        target: Target,
        lease_s: float = DEFAULT_LEASE_S,
        exempt_ssh: bool = True,
        dry_run: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Shape every host (hosts with nothing to shape are reset); read back and lease.

        If any host fails, the hosts this call shaped are reset again, so the fleet is never
        left half-shaped.
        """
        trees = trees_for(target, self.fleet.hosts, exempt_ssh)
        shaped = {name: tree for name, tree in trees.items() if tree is not None}
        unshaped = [name for name, tree in trees.items() if tree is None]
        answers: dict[str, dict[str, Any]] = {}
        if shaped:
            args = ["--dry-run"] if dry_run else ["--lease", str(lease_s)]
            answers.update(self._run_agent("apply", *args, trees=shaped))
        if unshaped and not dry_run:
            answers.update(self._run_agent("reset", hosts=unshaped))
        if not dry_run and not all(a["ok"] for a in answers.values()):
            applied = [n for n, a in answers.items() if a["ok"] and n in shaped]
            if applied:
                self._run_agent("reset", hosts=applied)
                for name in applied:
                    answers[name]["rolled_back"] = True
        return dict(sorted(answers.items()))

    def show(self) -> dict[str, dict[str, Any]]:
        """What every host's kernel holds, with counters and lease."""
        return self._run_agent("show")

    def reset(self) -> dict[str, dict[str, Any]]:
        """Restore every host's interface to what it was before wanlab; safe to repeat."""
        return self._run_agent("reset")

    def renew(self, lease_s: float = DEFAULT_LEASE_S) -> dict[str, dict[str, Any]]:
        """Extend every host's lease by `lease_s` seconds from now."""
        return self._run_agent("renew", "--lease", str(lease_s))

    def probe(
        self,
        pairs: list[tuple[str, str]] | None = None,
        seconds: float = 3.0,
        count: int = 50,
        port: int = DEFAULT_PORT,
    ) -> list[dict[str, Any]]:
        """RTT and throughput for each (src, dst) pair, one pair at a time (default: a ring)."""
        hosts = {host.name: host for host in self.fleet.hosts}
        names = list(hosts)
        if pairs is None:
            pairs = [(a, b) for a, b in zip(names, names[1:] + names[:1], strict=True) if a != b]
        if self._agents:
            return self._probe_with_agents(hosts, pairs, seconds, count, port)
        serve_for = str(60 + len(pairs) * (seconds + 10))
        dsts = sorted({dst for _, dst in pairs})
        started = self.ssh.run(
            lambda h: self._python(
                h,
                "netem.probe",
                "serve",
                "--detach",
                "--bind",
                h.address,
                "--port",
                str(port),
                "--for",
                serve_for,
            ),
            hosts=dsts,
        )
        pids = {name: _answer(result).get("pid") for name, result in started.items()}
        out = []
        try:
            for src, dst in pairs:
                measure = ["measure", "--to", hosts[dst].address, "--port", str(port),
                           "--count", str(count), "--seconds", str(seconds)]  # fmt: skip
                result = self.ssh.run(
                    self._python(hosts[src], "netem.probe", *measure),
                    timeout=self.timeout_s + seconds,
                    hosts=[src],
                )[src]
                out.append(_pair_answer(result, src, dst))
        finally:
            stop = "import os,sys; os.kill(int(sys.argv[1]), 15)"
            for name, pid in pids.items():
                if pid:
                    self.ssh.run([hosts[name].python, "-c", stop, str(pid)], hosts=[name])
        return out

    def _probe_with_agents(self, hosts, pairs, seconds: float, count: int, port: int) -> list[dict]:
        """The probe run inside the persistent agents: no process is started or stopped."""
        dsts = sorted({dst for _, dst in pairs})
        serve = {name: ["probe", "serve", "--bind", hosts[name].address, "--port", str(port)]
                 for name in dsts}  # fmt: skip
        listening = self._each(dsts, self._stream_call, lambda h: serve[h.name])
        out = []
        for src, dst in pairs:
            if not listening[dst].get("ok"):
                out.append({**listening[dst], "src": src, "dst": dst})
                continue
            measure = ["probe", "measure", "--to", hosts[dst].address, "--port", str(port),
                       "--count", str(count), "--seconds", str(seconds)]  # fmt: skip
            result = self._stream_call(src, measure, self.timeout_s + seconds)
            out.append(_pair_answer(result, src, dst))
        return out


def _pair_answer(result: HostResult, src: str, dst: str) -> dict[str, Any]:
    answer = _answer(result)
    answer.update(src=src, dst=dst)
    answer.pop("host", None)
    return answer
