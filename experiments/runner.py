"""Run an experiment matrix on a fleet, cell by cell.

For every cell: hand the cell to the ranks' workers (they join their process group and build
their stages), shape every host with the cell's profile and set its TCP settings (or read them,
where the cell leaves them as they are), read both back and compare, probe the network briefly
(once per profile, TCP setting and run: later cells of the pair reuse it),
let the ranks train, collect rank 0's timings, and reset.
Each finished cell is appended to the results store at once; a failed cell is recorded with its
reason and the matrix goes on. Whatever happens (failure, Ctrl-C), every host's qdisc and TCP
settings are reset and every rank started is stopped before the runner returns.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paramiko
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experiments.launch import TrainerLauncher, WorkerLost
from experiments.matrix import Cell, MatrixSpec
from experiments.results import CellNetwork, CellRecord, ResultsStore, Summary
from experiments.workload.launch import JobLauncher, JobResult
from experiments.workload.ranks import check_together, workdir
from inventory.check import check_fleet
from inventory.errors import ConfigError, HostsUnreachable
from inventory.models import Fleet
from inventory.ssh import FleetSSH
from netem.fleet import FleetNetem, Heartbeat, Target, controller_identity, trees_for
from netem.profile import Profile
from netem.tcp import PRESETS, TcpSettings


@dataclass
class RunOutcome:
    """How a matrix run ended."""

    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False


@contextmanager
def interrupts_held():
    """Ignore Ctrl-C while the fleet is put back: a second Ctrl-C must not cut the clean-up."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe_target(target: Target) -> dict:
    """The network setting as stored with a cell: a profile's fields, or the pair matrix's links."""
    if isinstance(target, Profile):
        return {"kind": "profile", "short": target.short(), **target.model_dump()}
    return {
        "kind": "pairs",
        "short": target.source,
        "by": target.by,
        "links": [link.model_dump() for link in target.links],
    }


class MatrixRunner:
    """Runs the cells of one matrix on one fleet into one results store."""

    def __init__(self, spec: MatrixSpec, fleet: Fleet, store: ResultsStore, console: Console):
        self.spec = spec
        self.fleet = fleet
        self.store = store
        self.console = console
        self.host_facts: dict[str, dict] = {}
        self.probes: dict[tuple[str, str], list[dict]] = {}  # by (profile, tcp), once per run
        self.heartbeat: Heartbeat | None = None  # renews the shaped hosts' leases
        self.shaped: list[str] = []  # the hosts the current cell shaped

    def check_inputs(self, resume: bool = False) -> None:
        """Everything that can be checked without touching a host: raises ConfigError."""
        self.store.check_for_run(resume)
        for cell in self.spec.cells():
            hosts = self.spec.place(cell, self.fleet)
            if self.spec.workload(cell) is not None:
                check_together(hosts, str(self.spec.source))
        for target in self.spec.targets.values():
            trees_for(target, self.fleet.hosts)  # pair matrices name hosts of this fleet

    def run(self, resume: bool = False) -> RunOutcome:
        """Run every cell not already done; reset the fleet and stop ranks however it ends."""
        self.check_inputs(resume)
        self.store.open_for_run(self.spec.source, resume)
        done = self.store.done_ids() if resume else set()
        for number in self.store.torn_lines:
            self.console.print(
                f"warning: {self.store.cells_path} line {number} is not a whole record "
                "(a crash cut it); it is ignored and its cell runs again",
                highlight=False,
            )
        cells = self.spec.cells()
        outcome = RunOutcome(skipped=[c.cell_id for c in cells if c.cell_id in done])
        todo = [c for c in cells if c.cell_id not in done]
        facts = self._host_facts()
        owner = f"{controller_identity()} run {os.getpid()}"
        with FleetNetem(self.fleet, self.spec.timeouts.apply_s, owner) as netem:
            self._record_environment(facts, netem)
            held = netem.held_by_others()
            if held:
                raise HostsUnreachable("in use by another controller", held)
            launcher = TrainerLauncher(self.fleet, netem.ssh)
            jobs = JobLauncher(self.fleet, netem.ssh, launcher.code)
            try:
                self._start_workers(todo, launcher)
                self._prepare_workloads(todo, jobs)
                self._run_cells(todo, netem, (launcher, jobs), outcome)
            except KeyboardInterrupt:
                outcome.interrupted = True
                self.console.print(
                    "[yellow]interrupted: stopping ranks and resetting hosts", markup=True
                )
            finally:
                with interrupts_held(), FleetSSH(self.fleet) as control:
                    launcher.stop_all(control)
                    jobs.stop_all(control)
                    netem.reset()
        return outcome

    def _host_facts(self) -> list[dict]:
        """What every host is (`inventory check`'s reports), refusing a fleet with a host out
        of reach or short of the GPUs the matrix's cells need, before any host is touched."""
        facts = check_fleet(self.fleet)
        unreachable = [f["name"] for f in facts if not f["reachable"]]
        if unreachable:
            raise ConnectionError(f"unreachable before the run: {', '.join(unreachable)}")
        check_gpus(self.spec, self.fleet, {f["name"]: f for f in facts})
        return facts

    def _record_environment(self, facts: list[dict], netem: FleetNetem) -> None:
        """Keep what every host is, with its TCP settings as its agent reads them, in run.json,
        refusing first a matrix whose congestion controls a host cannot have."""
        tcp = netem.tcp_facts()
        unread = {name: fact["error"] for name, fact in tcp.items() if "error" in fact}
        if unread:
            raise HostsUnreachable("the TCP settings could not be read", unread)
        keep = ("kernel", "python", "torch", "pyroute2", "cpus", "interface", "netem", "tcp", "gpu")
        self.host_facts = {
            f["name"]: {k: tcp[f["name"]] if k == "tcp" else f.get(k) for k in keep} for f in facts
        }
        check_congestion_controls(self.spec, self.fleet, self.host_facts)
        self.store.write_run_info(
            {
                "started_at": _now(),
                "matrix": self.spec.header.name,
                "inventory": str(self.fleet.source),
                "delay_node": self.fleet.delay_node is not None,
                "strict_host_keys": self.fleet.strict_host_keys,
                "hosts": self.host_facts,
            }
        )

    def _start_workers(self, todo: list[Cell], launcher: TrainerLauncher) -> None:
        """Import torch on every host once, before the cells (so no cell is charged for it).

        A host whose worker will not start is left to the cells that need it: each of them
        tries again and records the reason if it fails.
        """
        todo = [cell for cell in todo if self.spec.workload(cell) is None]
        if not todo:
            return
        widest = max(todo, key=lambda cell: self.spec.trainer_config(cell).world_size)
        try:
            launcher.start_workers(self.spec.place(widest, self.fleet))
        except (WorkerLost, OSError, paramiko.SSHException) as error:
            self.console.print(
                f"[yellow]workers did not all start ({escape(str(error))}); cells retry",
                markup=True,
            )
            launcher.stop_all()

    def _prepare_workloads(self, todo: list[Cell], jobs: JobLauncher) -> None:
        """Ship each workload's files, read its versions and run its prepare command on every
        host its cells use, before the first cell (a host where that fails fails only the
        cells that need it, with the reason)."""
        for name, workload in self.spec.workloads.items():
            cells = [cell for cell in todo if cell.workload == name]
            hosts = {h.name: h for cell in cells for h in self.spec.place(cell, self.fleet)}
            if hosts:
                self.console.print(f"preparing workload {name} on {len(hosts)} host(s)",
                                   highlight=False)  # fmt: skip
                jobs.prepare(workload, list(hosts.values()), self.host_facts)

    def _run_cells(self, todo, netem, launchers, outcome: RunOutcome) -> None:
        columns = [
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} cells"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console) as progress:
            task = progress.add_task("starting", total=len(todo))
            for number, cell in enumerate(todo, start=1):
                progress.update(task, description=cell.cell_id)
                if self.spec.workload(cell) is None:
                    record = self.run_cell(cell, netem, launchers[0])
                else:
                    record = self.run_workload_cell(cell, netem, launchers[1])
                self.store.append(record)
                outcome.ran.append(cell.cell_id)
                if record.status != "ok":
                    outcome.failed.append(cell.cell_id)
                # one line per finished cell: a progress bar draws nothing where the output is
                # not a terminal (a log file, CI), and there this is all the user sees
                progress.console.print(
                    cell_line(record, number, len(todo)),
                    highlight=False,
                    soft_wrap=True,
                    markup=True,
                )
                progress.advance(task)

    def run_cell(self, cell: Cell, netem: FleetNetem, launcher: TrainerLauncher) -> CellRecord:
        """Build, apply, verify, probe, train, collect, reset: one cell's record.

        The ranks build their stages before the network is shaped and join their process group
        after it, while the network is probed: their connections must be made on the network
        under test (see `trainer.train.train`).
        """
        config = self.spec.trainer_config(cell)
        record = self._new_record(cell, config.model_dump(mode="json", exclude={"out", "iface"}))
        started = time.monotonic()
        timing = record.timing

        def shape() -> str | None:
            timing.connect_s = time.monotonic() - started
            return self._shape(cell, netem, record)

        def probe() -> None:
            self._probe_once(cell, config, netem, record)

        try:
            launched = launcher.run(
                config, self.spec.place(cell, self.fleet), _run_name(cell),
                self.spec.timeouts.cell_s, shape, while_joining=probe,
            )  # fmt: skip
            timing.train_s = launched.seconds
            record.placement = launched.placement
            record.placement_rule = self.spec.placement.describe()
            if launched.ok:
                record.status, record.summary = "ok", Summary.model_validate(launched.summary)
            else:
                record.reason = launched.reason
            return record
        finally:
            self._end_cell(netem, record, started)

    def run_workload_cell(self, cell: Cell, netem: FleetNetem, jobs: JobLauncher) -> CellRecord:
        """A workload's cell: start its job hosts, shape, probe, run the job, collect, reset."""
        workload = self.spec.workload(cell)
        record = self._new_record(cell, {})
        started = time.monotonic()
        timing = record.timing

        def shape() -> str | None:
            timing.connect_s = time.monotonic() - started
            return self._shape(cell, netem, record)

        def probe() -> None:
            self._probe_once(cell, None, netem, record)

        run_name = _run_name(cell)
        values = {
            **cell.params(), "world_size": cell.dp_degree, "cell_id": cell.cell_id,
            "run": run_name, "workload": workload.name, "iterations": workload.table.iterations,
            "warmup": workload.table.warmup,
        }  # fmt: skip
        cell_s = workload.table.cell_s or self.spec.timeouts.cell_s
        try:
            hosts = self.spec.place(cell, self.fleet)
            result = jobs.run(
                workload, values, hosts, run_name, cell_s, self.host_facts, shape, probe
            )
            timing.train_s = result.seconds
            record.placement = result.placement
            record.placement_rule = self.spec.placement.describe()
            record.workload = _workload_record(workload, values, hosts, result, jobs)
            outcome = result.outcome
            if outcome.summary is not None and outcome.summary["phases"]["total_s"]["mean"] > 0:
                record.summary = Summary.model_validate(outcome.summary)
            if outcome.ok and record.summary is not None:
                record.status = "ok"
            else:
                record.reason = outcome.reason or "no step timed"
            return record
        finally:
            self._end_cell(netem, record, started)

    def _shape(self, cell: Cell, netem: FleetNetem, record: CellRecord) -> str | None:
        """Apply the cell's network and TCP settings and compare the read-back; a failure's
        reason, or None."""
        started = time.monotonic()
        lease_s = self.spec.timeouts.lease_s
        # only the cell's own hosts: a host it does not use (or one that is lost) stays out
        used = list(dict.fromkeys(host.name for host in self.spec.place(cell, self.fleet)))
        applied = netem.apply(self.spec.targets[cell.profile], lease_s=lease_s, names=used)
        settings = self.spec.tcp_settings(cell)
        if settings is None:
            tcp = netem.show_tcp(used)
        else:
            tcp = netem.apply_tcp(settings, lease_s=lease_s, names=used)
        self.shaped = [name for name, answer in applied.items() if answer.get("lease_until")]
        tcp_set = [name for name, answer in tcp.items() if answer.get("lease_until")]
        if self.shaped or tcp_set:
            self.heartbeat = netem.heartbeat(lease_s, self.shaped, tcp_set)
        record.timing.apply_s = time.monotonic() - started
        record.network.applied = {n: a.get("shaping") for n, a in applied.items()}
        record.network.tcp = {n: a.get("tcp") for n, a in tcp.items()}
        record.network.mtu = {n: a.get("mtu") for n, a in tcp.items()}
        failures = [
            f"{what}{n}: {a.get('error') or 'read-back differs'}"
            for what, answers in (("", applied), ("TCP settings on ", tcp))
            for n, a in answers.items()
            if not a.get("ok") or a.get("matches") is False
        ]
        return "apply: " + "; ".join(failures) if failures else None

    def _new_record(self, cell: Cell, trainer: dict) -> CellRecord:
        """A cell's record as it starts: its coordinates, network setting and hosts."""
        return CellRecord(
            cell_id=cell.cell_id,
            matrix=self.spec.header.name,
            params=cell.params(),
            trainer=trainer,
            network=CellNetwork(
                setting=describe_target(self.spec.targets[cell.profile]),
                tcp_setting=_tcp_setting(self.spec.tcp_settings(cell)),
            ),
            hosts=self.host_facts,
            started_at=_now(),
        )

    def _end_cell(self, netem: FleetNetem, record: CellRecord, started: float) -> None:
        """Stop renewing, check the network held, reset the hosts and close the record's
        timing: how every cell ends, however it ended."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        self._check_still_shaped(netem, record)
        reset_started = time.monotonic()
        netem.reset()
        record.timing.reset_s = time.monotonic() - reset_started
        record.timing.cell_s = time.monotonic() - started
        record.finished_at = _now()
        record.finish_timing()

    def _check_still_shaped(self, netem: FleetNetem, record: CellRecord) -> None:
        """Fail a cell whose hosts no longer held its network when it ended: a lease that
        lapsed (renewals that fell behind) or a tree changed by someone else means the times
        were not measured on the profile. The summary is kept; the reason says why."""
        shaped, self.shaped = self.shaped, []
        if not shaped or record.status != "ok":
            return
        lost = [
            name
            for name, answer in netem.show(shaped).items()
            if not answer.get("ok") or answer.get("matches_applied") is not True
        ]
        if lost:
            record.status = "failed"
            record.reason = (
                f"the network was no longer as applied on {', '.join(lost)} when the cell ended "
                "(its lease lapsed or something else changed its qdiscs): the times are not "
                "the profile's; raise [timeouts] lease_s if renewals fell behind"
            )

    def _probe_once(self, cell: Cell, config, netem: FleetNetem, record: CellRecord) -> None:
        """Probe the shaped network, once per profile, TCP setting and run (the ranks join
        meanwhile: their few small messages do not move a median RTT or a bulk window's rate)."""
        started = time.monotonic()
        key = (cell.profile, cell.tcp)
        if key not in self.probes:
            self.probes[key] = self._probe(netem, cell)
        else:
            record.network.probe_from_earlier_cell = True
        record.network.probe = self.probes[key]
        record.timing.probe_s = time.monotonic() - started

    def _probe(self, netem: FleetNetem, cell: Cell) -> list[dict]:
        placed = self.spec.place(cell, self.fleet)
        hosts = list({host.name: host for host in placed}.values())  # a host of many ranks once
        if len(hosts) < 2:
            hosts = self.fleet.hosts[:2]
        if len(hosts) < 2:
            return []
        settings = self.spec.probe
        pair = [(hosts[0].name, hosts[1].name)]
        # the receive share is the hosts' kernel's, not the network's: the calibrations take
        # it from the unshaped cells, so only their probes measure it
        target = self.spec.targets[cell.profile]
        unshaped = isinstance(target, Profile) and target.is_default
        return netem.probe(
            pairs=pair, seconds=settings.seconds, count=settings.count, receive_share=unshaped
        )


def _workload_record(workload, values: dict, hosts, result: JobResult, jobs: JobLauncher) -> dict:
    """What a workload cell's record keeps of its job."""
    table = workload.table
    prepared = jobs.prepared.get(workload.name)
    used = list(dict.fromkeys(host.name for host in hosts))
    return {
        "name": workload.name,
        "timing": table.timing,
        "pattern": table.pattern,
        "iterations": table.iterations,
        "warmup": table.warmup,
        "batch": workload.batch(values),
        "command": table.command,
        "workdir": {host.name: workdir(workload, host) for host in hosts},
        "env": result.env,
        "versions": {name: (prepared.versions.get(name) if prepared else None) for name in used},
        "processes": result.processes,
        "exit_note": result.outcome.note,
    }


def _tcp_setting(settings: TcpSettings | None) -> dict | None:
    return None if settings is None else settings.model_dump(mode="json", exclude_none=True)


def cell_line(record: CellRecord, number: int, total: int) -> str:
    """One line saying how a finished cell went (rich markup, user text escaped)."""
    where = f"[{number}/{total}] {escape(record.cell_id)}"
    if not record.ok:
        return f"{where} [red]failed[/red]: {escape(str(record.reason))}"
    summary = record.summary
    note = (record.workload or {}).get("exit_note")
    return (
        f"{where} ok: {summary.iteration_s:.3f} s per iteration "
        f"(mean of {summary.timed_iterations}), cell {record.timing.cell_s:.1f} s"
        + (f" [yellow]({escape(note)})[/yellow]" if note else "")
    )


def _run_name(cell: Cell) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cell.cell_id)
    return f"{safe}-{int(time.time())}"


def check_gpus(spec: MatrixSpec, fleet: Fleet, host_facts: dict[str, dict]) -> None:
    """Refuse a matrix whose CUDA cells need more GPUs on a host than it has (one per rank the
    placement gives it)."""
    if spec.trainer.get("device") != "cuda":
        return
    needed: dict[str, int] = {}
    for cell in spec.trainer_cells():
        for name, ranks in Counter(host.name for host in spec.place(cell, fleet)).items():
            needed[name] = max(needed.get(name, 0), ranks)
    short = [
        f"{name} has {has} for {ranks}"
        for name, ranks in needed.items()
        if (has := (host_facts.get(name, {}).get("gpu") or {}).get("count") or 0) < ranks
    ]
    if short:
        raise ConfigError(
            str(spec.source), "trainer.device",
            f"cuda cells need a GPU per rank on each of {len(needed)} hosts; "
            f"{', '.join(short)}",
        )  # fmt: skip


def usable_congestion_controls(tcp: dict) -> set[str] | None:
    """The congestion controls a host may choose, from its recorded TCP facts: in the machine's
    own network namespace every one its kernel has or can load, in another only the allowed
    ones (the kernel refuses the rest there); None where the facts do not say."""
    allowed = tcp.get("allowed_congestion_control")
    if allowed is None:
        return None
    if not tcp.get("machines_namespace"):
        return set(allowed)
    has = tcp.get("available_congestion_control", [])
    return set(allowed) | set(has) | set(tcp.get("loadable_congestion_control", []))


def check_congestion_controls(spec: MatrixSpec, fleet: Fleet, host_facts: dict[str, dict]) -> None:
    """Refuse a matrix whose TCP settings choose a congestion control that a host it places
    cells on cannot have, before any host is touched."""
    hosts_wanting: dict[tuple[str, str], set[str]] = {}
    for cell in spec.cells():
        settings = spec.tcp_settings(cell)
        if settings is not None and settings.congestion_control is not None:
            key = (cell.tcp, settings.congestion_control)
            hosts_wanting.setdefault(key, set()).update(h.name for h in spec.place(cell, fleet))
    for (name, wanted), hosts in hosts_wanting.items():
        lacking = {}
        for host in sorted(hosts):
            usable = usable_congestion_controls((host_facts.get(host) or {}).get("tcp") or {})
            if usable is not None and wanted not in usable:
                lacking[host] = " ".join(sorted(usable)) or "none"
        if lacking:
            field = "axes.tcp" if name in PRESETS else f"tcp.{name}.congestion_control"
            where = "; ".join(f"{host} has {has}" for host, has in lacking.items())
            raise ConfigError(
                str(spec.source), field, f"congestion control {wanted} ({name}) cannot be chosen "
                f"on {len(lacking)} host(s): {where}",
            )  # fmt: skip
