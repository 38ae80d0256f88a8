"""The delay node: a user-mode Linux kernel that forwards between the local fleet's hosts and
shapes every host's egress for it, for machines whose own kernel has no sch_netem.

The hosts stay network namespaces on the host kernel (fast, every core). Host i's link ends in a
tap that the node sees as `vec<i>`; the node bridges all of them (and the controller's tap), and
redirects what arrives on `vec<i>` (host i's egress) through `ifb<i>`. Shaping host i means
building on `ifb<i>` exactly the tree that would sit on host i's own interface, with the same
agent code: the node answers every request it receives with its own `netem.agent.Agent`.

Requests travel through a mailbox folder on the host's files (the node's root is hostfs):
`requests/<id>.json` holds a batch of agent requests (one per host, so a fleet-wide verb costs
one round trip), `responses/<id>.json` their answers. The node's loop also holds the leases (a
watchdog process would cost the node's single CPU seconds of start-up at every apply, stalling
the very packets it forwards).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from inventory.safewrite import open_append, write_file
from netem.kernel import (
    MODULE_FAILED,
    Kernel,
    KernelError,
    boot_argv,
    current,
    describe,
    init_prelude,
    panic_line,
)

BRIDGE = "br0"
FORWARDING_FILE = "forwarding.json"
POLL_S = 0.01
"""How often the controller looks for an answer, and the node for requests while busy."""
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


class DelayNodeError(RuntimeError):
    """The delay node did not start: `cause` (from its console or logs), `remedy`, and the exit
    code the command line ends with (2: fix this machine's set-up; 1: it may pass on a retry)."""

    def __init__(self, cause: str, remedy: str, exit_code: int):
        super().__init__(f"the delay node did not start: {cause}; {remedy}")
        self.cause, self.remedy, self.exit_code = cause, remedy, exit_code


@dataclass(frozen=True)
class ForwardingLatency:
    """What the node's forwarding adds, one way, to a netem delay: measured at a few delays
    (one-way ms, latency ms), interpolated between them and flat beyond; 0 when unmeasured."""

    points: tuple[tuple[float, float], ...] = ()

    def __call__(self, delay_ms: float) -> float:
        """The node's own latency, in ms, on a path with this one-way delay."""
        if not self.points:
            return 0.0
        (first_delay, first), (last_delay, last) = self.points[0], self.points[-1]
        if delay_ms <= first_delay:
            return first
        if delay_ms >= last_delay:
            return last
        for (d0, l0), (d1, l1) in itertools.pairwise(self.points):
            if d0 <= delay_ms <= d1:
                return l0 + (l1 - l0) * (delay_ms - d0) / (d1 - d0)
        return last


def host_vec(index: int) -> str:
    """The node's interface facing host `index`."""
    return f"vec{index}"


def host_ifb(index: int) -> str:
    """The node's interface that carries host `index`'s egress, where its shaping is built."""
    return f"ifb{index}"


# -- the controller's side -------------------------------------------------------------------
class DelayNode:
    """Boot, call and stop the node; `directory` holds its mailbox, init script and logs."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.requests = self.directory / "requests"
        self.responses = self.directory / "responses"
        self.pid_file = self.directory / "uml.pid"

    def pid(self) -> int | None:
        """PID of the running node's kernel process, else None."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.directory).encode() in cmdline else None

    def start(self, taps: list[str], mem: str = "1G", timeout: float = 120.0) -> None:
        """Boot the node with one vector interface per tap (hosts first, controller last) and
        wait until it says ready. On any failure the node is stopped and DelayNodeError says
        why, with the cause taken from the node's console or logs."""
        if self.pid() is not None:
            return
        try:
            kernel = current()
            init_text = self._init_script(kernel, n_vecs=len(taps))
        except KernelError as error:
            raise DelayNodeError(str(error), "then bring the fleet up again", 2) from None
        for tap in taps:
            holder = tap_holder(tap)
            if holder is not None:
                raise DelayNodeError(
                    f"tap {tap} is held by another process ({holder})",
                    "stop that process (or `wanlab fleet down` the fleet that owns it)",
                    2,
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        for folder in (self.requests, self.responses):
            folder.mkdir(exist_ok=True)
        stale_files = ("ready.json", "stop", "returncode", "node.log", "console.log",
                       FORWARDING_FILE)  # fmt: skip
        for stale in (*stale_files, MODULE_FAILED):
            (self.directory / stale).unlink(missing_ok=True)
        write_file(self.directory / "kernel.json", json.dumps(describe(), indent=2), None)
        init = write_file(self.directory / "init.sh", init_text, None, mode=0o755)
        vectors = [f"vec{i}:transport=tap,ifname={tap}" for i, tap in enumerate(taps)]
        argv = boot_argv(kernel.binary, init, f"wanlab-node-{os.getpid()}", self.directory, mem)
        with open_append(self.directory / "console.log", None) as console:
            process = subprocess.Popen(
                [*argv[:-1], *vectors, argv[-1]],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        write_file(self.pid_file, str(process.pid), None)
        deadline = time.monotonic() + timeout
        while not (self.directory / "ready.json").exists():
            if process.poll() is not None:
                failure = self._diagnose(kernel, exit_status=process.returncode)
                self._abandon(process)
                raise failure
            if time.monotonic() > deadline:
                self._abandon(process)
                raise DelayNodeError(
                    f"it did not say ready within {timeout:g} s ({self._last_words()})",
                    "the machine may be overloaded: try again; if it persists, see "
                    f"{self.directory}/console.log and node.log",
                    1,
                )
            time.sleep(0.05)

    def _abandon(self, process: subprocess.Popen) -> None:
        """Kill a node that failed to start (its whole process group) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.pid_file.unlink(missing_ok=True)

    def _diagnose(self, kernel: Kernel, exit_status: int) -> DelayNodeError:
        """Why a node that exited before it was ready failed, from what it left behind."""
        failed = self.directory / MODULE_FAILED
        if failed.exists():
            return DelayNodeError(
                f"its kernel ({kernel.package}) could not load a module: "
                f"{failed.read_text().strip()}",
                "run `wanlab fleet kernel --refresh` to fetch and probe the kernel again",
                2,
            )
        console = _read_tail(self.directory / "console.log")
        panic = panic_line(console)
        if panic:
            return DelayNodeError(
                f"its kernel ({kernel.package}) panicked at boot: {panic}",
                "run `wanlab fleet kernel --refresh` to fetch and probe a kernel for this CPU",
                2,
            )
        return DelayNodeError(
            f"its kernel exited with status {exit_status} before it was ready "
            f"({self._last_words()})",
            f"see {self.directory}/console.log and node.log",
            1,
        )

    def _last_words(self) -> str:
        """The last line the node's program or, failing that, its kernel wrote."""
        for name in ("node.log", "console.log"):
            lines = _read_tail(self.directory / name).strip().splitlines()
            if lines:
                return f"{name} ends: {lines[-1].strip()}"
        return "it wrote nothing"

    def _init_script(self, kernel: Kernel, n_vecs: int) -> str:
        serve = [sys.executable, "-m", "netem.delaynode", str(self.directory), str(n_vecs)]
        return f"""{init_prelude(kernel, self.directory, n_ifbs=n_vecs)}
{shlex.join(serve)} > {self.directory}/node.log 2>&1 &
pid=$!
wait $pid
echo $? > {self.directory}/returncode
halt -f
"""

    def release(self) -> str | None:
        """The release of the kernel the running node booted, as it says itself."""
        try:
            return json.loads((self.directory / "ready.json").read_text())["release"]
        except (OSError, ValueError, KeyError):
            return None

    def forwarding(self) -> ForwardingLatency:
        """The node's own one-way latency under netem, as measured when the lab came up
        (`record_forwarding`); none until then. Every delay the node applies is less this."""
        try:
            measured = json.loads((self.directory / FORWARDING_FILE).read_text())
            points = [(float(d), float(ms)) for d, ms in measured["one_way_ms_at_delay"].items()]
        except (OSError, ValueError, KeyError, AttributeError):
            points = []
        return ForwardingLatency(tuple(sorted(points)))

    def record_forwarding(self, measurement: dict) -> None:
        """Keep the measured forwarding latency (`one_way_ms_at_delay`, and how it was
        measured)."""
        write_file(self.directory / FORWARDING_FILE, json.dumps(measurement, indent=2), None)

    def call(self, requests: list[dict], timeout: float = 60.0) -> list[dict]:
        """The node's agent's answers to `requests`, in order, in one mailbox round trip."""

        def failed(error: str) -> list[dict]:
            return [{"ok": False, "error": error, "error_kind": "transport"}] * len(requests)

        if self.pid() is None:
            return failed("the delay node is not running")
        request_id = uuid.uuid4().hex
        response = self.responses / f"{request_id}.json"
        message = json.dumps({"batch": requests})
        write_file(self.requests / f"{request_id}.json", message, None, sync=False)
        deadline = time.monotonic() + timeout
        while not response.exists():
            if time.monotonic() > deadline or self.pid() is None:
                (self.requests / f"{request_id}.json").unlink(missing_ok=True)
                return failed(f"the delay node did not answer within {timeout:g} s")
            time.sleep(POLL_S)
        answers = json.loads(response.read_text())["batch"]
        response.unlink()
        return answers

    def stop(self, timeout: float = 20.0) -> None:
        """Halt the node (its kernel forgets every qdisc); kill it by PID if it will not halt."""
        pid = self.pid()
        if pid is None:
            return
        write_file(self.directory / "stop", "", None, sync=False)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)


def tap_holder(tap: str) -> str | None:
    """Which process holds `tap` open ("PID NAME"), if any: a held tap cannot carry the node."""
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        if f"iff:\t{tap}\n" in text:
            pid = fdinfo.parts[2]
            return f"PID {pid} {_read_tail(Path(f'/proc/{pid}/comm')).strip()}"
    return None


def _read_tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, path.stat().st_size - size))
            return stream.read().decode(errors="replace")
    except OSError:
        return ""


# -- the node's side (runs inside user-mode Linux) -------------------------------------------
def _set_up_forwarding(n_vecs: int) -> list[dict]:
    """Bridge every vector interface; redirect each host's ingress through its ifb."""
    from pyroute2 import IPRoute

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


def _warm_up(agent, interface: str) -> None:
    """Shape and reset one of the node's own interfaces once before saying ready: a process's
    first apply costs twice a later one (imports, its netlink socket), and the first cell
    should not pay for that."""
    from netem.profile import parse_profile
    from netem.tree import tree_for_profile

    agent.apply(interface, tree_for_profile(parse_profile("1gbit")), lease_s=0)
    agent.reset(interface)


def serve(directory: Path, n_vecs: int) -> None:
    """Set up forwarding, then answer mailbox requests until the `stop` file appears."""
    from netem.agent import Agent

    hosts = _set_up_forwarding(n_vecs)
    requests, responses = directory / "requests", directory / "responses"
    agent = Agent()  # its state folder is under the node's own /run
    _warm_up(agent, host_ifb(0))
    ready = {"hosts": hosts, "release": os.uname().release}  # the kernel that really runs
    (directory / "ready.json").write_text(json.dumps(ready))
    last_request = time.monotonic()
    while True:
        try:
            if (directory / "stop").exists():
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
