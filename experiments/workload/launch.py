"""Run a workload's cell on the fleet: one job host per host (`trainer.jobhost`), over SSH.

The job hosts start first and say they are ready (with rank 0's host's free port); then the
runner shapes the network and probes it, and only then do the job's processes start, so every
connection the job makes is made on the network under test. The first process that fails, a
host that stops answering, or the cell's limit stops every host at once (a rank's peers would
otherwise wait for their framework's own timeout, many minutes); each job host kills its whole
process tree. `stop_all` ends any job host left, by the PID and marker it recorded.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import paramiko

from experiments.workload.outcome import Outcome, decide
from experiments.workload.ranks import Process, processes, workdir, workload_python
from experiments.workload.spec import WorkloadSpec
from experiments.workload.template import PROCESS_SCOPE, fields, render
from inventory.models import Fleet, Host
from inventory.ssh import FleetSSH, Stream
from trainer.jobhost import BOOT, MARK

READY_S = 120.0
STOP_S = 15.0
"""How long a job host has to report its processes after a stop before it is killed by PID."""
LINGER_S = 30.0
"""How long other processes may run on once the timing rank has exited."""
LIGHTNING_FOLDER = Path(__file__).parent / "ship" / "lightning"
LIGHTNING_PATH = ".wanlab-lightning"
"""Where, in a Lightning workload's workdir, the step-time callback and its entry point go."""
VERSIONS = (
    "import importlib.metadata as m, json, os, sys\n"
    "def v(name):\n"
    "    try:\n        return m.version(name)\n"
    "    except m.PackageNotFoundError:\n        return None\n"
    "folders = [os.path.join(p, 'bin') for p in (sys.prefix, sys.base_prefix)]\n"
    "print(json.dumps({'versions': {n: v(n) for n in sys.argv[1:]}, "
    "'path': list(dict.fromkeys(folders))}))"
)
"""Run by the workload's interpreter on each host: the versions of its distributions, and the
`bin` folders of its environment and of the interpreter it was made from (an activated
environment's PATH: `ninja`, `torchrun` and `deepspeed` live there)."""


@dataclass
class JobResult:
    """What one workload cell gave."""

    outcome: Outcome
    processes: list[dict]
    """Per rank: host, argv, exit code or signal, stopped by wanlab, last lines on failure."""
    env: dict[str, str]
    """Rank 0's environment as wanlab set it (the workload's own `env` by name only)."""
    placement: dict[int, str]
    seconds: float


@dataclass
class Prepared:
    """A workload made ready on its hosts: versions read, files shipped, prepare run."""

    versions: dict[str, dict] = field(default_factory=dict)
    path: dict[str, list[str]] = field(default_factory=dict)
    """Host → the folders that lead the jobs' PATH."""
    failed: dict[str, str] = field(default_factory=dict)
    """Host → why the workload cannot run there."""
    seconds: dict[str, float] = field(default_factory=dict)


class JobLauncher:
    """Runs workload cells through job hosts started from the shipped code zip."""

    def __init__(self, fleet: Fleet, ssh: FleetSSH, code: dict[str, str]):
        self.fleet = fleet
        self.ssh = ssh
        self.code = code
        self.streams: dict[str, Stream] = {}
        self.prepared: dict[str, Prepared] = {}

    def _pid_file(self, host: Host) -> str:
        return str(PurePosixPath(host.workdir) / f"jobhost-{host.name}.pid")

    def _open(self, host: Host) -> Stream:
        argv = [host.python, "-c", BOOT, self.code[host.name], "serve", self._pid_file(host)]
        stream = self.ssh.open_stream(host.name, argv, {})
        self.streams[host.name] = stream
        return stream

    def _ready(self, hosts: list[Host]) -> tuple[dict[str, dict], dict[str, str]]:
        """Start a job host on each of `hosts`; their ready answers, and why for those that
        gave none."""
        answers, lost = {}, {}

        def start(host: Host) -> dict:
            message = self._open(host).read_message(MARK, READY_S)
            if message is None or "ready" not in message:
                chatter = self.streams[host.name].chatter
                raise RuntimeError(chatter[-1] if chatter else "the job host ended")
            return message["ready"]

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = {host.name: pool.submit(start, host) for host in hosts}
            for name, future in futures.items():
                try:
                    answers[name] = future.result()
                except (RuntimeError, TimeoutError, OSError, paramiko.SSHException) as error:
                    lost[name] = str(error)
        return answers, lost

    def prepare(self, workload: WorkloadSpec, hosts: list[Host], facts: dict[str, dict]) -> None:
        """Make `workload` ready on `hosts` before its first cell: its workdir and shipped files,
        the versions, its prepare command (run by a job host, as a job is)."""
        prepared = self.prepared.setdefault(workload.name, Prepared())
        todo = [
            h for h in hosts if h.name not in prepared.versions and h.name not in prepared.failed
        ]
        if not todo:
            return
        for host in todo:
            try:
                self._ship(workload, host)
                read = self._versions(workload, host)
                prepared.versions[host.name] = read["versions"]
                prepared.path[host.name] = read["path"]
            except (RuntimeError, OSError, paramiko.SSHException) as error:
                prepared.failed[host.name] = f"shipping its files failed on {host.name}: {error}"
        ready_hosts = [h for h in todo if h.name not in prepared.failed]
        if workload.table.prepare is None or not ready_hosts:
            return
        answers, lost = self._ready(ready_hosts)
        for name, why in lost.items():
            prepared.failed[name] = f"prepare could not start on {name}: {why}"
        started = time.monotonic()
        running = [h for h in ready_hosts if h.name in answers]
        for host in running:
            values = {
                "host": host.name,
                "address": host.address,
                "slots": host.slots,
                "python": workload_python(workload, host),
                "workdir": workdir(workload, host),
                "workload": workload.name,
                "iterations": workload.table.iterations,
                "warmup": workload.table.warmup,
            }
            argv = [render(word, values) for word in workload.table.prepare]
            env = {
                name: render(v, values)
                for name, v in workload.table.env.items()
                if set(fields(v, PROCESS_SCOPE)) <= set(values)
            }
            env["OMP_NUM_THREADS"] = str(max(1, facts.get(host.name, {}).get("cpus") or 1))
            folder = workdir(workload, host)
            out = str(PurePosixPath(host.workdir) / "prepare" / workload.name)
            process = {
                "rank": 0,
                "argv": argv,
                "env": env,
                "cwd": folder,
                "out": out,
                "timing": None,
            }
            self._send(
                host.name,
                {"run": self._run_request([process], workload, host, workload.table.prepare_s)},
            )
        for host in running:
            reports = self._drain(host.name, workload.table.prepare_s + STOP_S)
            report = reports.get(0)
            prepared.seconds[host.name] = time.monotonic() - started
            if report is None or report.get("code") != 0:
                last = (report or {}).get("tail") or ["no answer"]
                code = (report or {}).get("code") or (report or {}).get("signal")
                prepared.failed[host.name] = (
                    f"prepare failed on {host.name} (exit {code}): {last[-1][:200]}"
                )
            self._close(host.name)

    def _ship(self, workload: WorkloadSpec, host: Host) -> None:
        """Make the workdir and put each shipped file there under a temporary name, renamed
        over the target (a link at the target is replaced, never written through)."""
        folder = workdir(workload, host)
        files = dict(workload.files)
        if workload.table.timing == "lightning":
            for path in sorted(LIGHTNING_FOLDER.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    relative = path.relative_to(LIGHTNING_FOLDER).as_posix()
                    files[f"{LIGHTNING_PATH}/{relative}"] = path.read_bytes()
        temporary = {name: f"{name}.wanlab-{time.time_ns()}" for name in files}
        make = (
            "import os, sys\nbase = sys.argv[1]\nos.makedirs(base, exist_ok=True)\n"
            "for name in sys.argv[2:]:\n"
            "    os.makedirs(os.path.dirname(os.path.join(base, name)), exist_ok=True)"
        )
        self._check(self.ssh.run([host.python, "-c", make, folder, *files], hosts=[host.name]))
        with tempfile.TemporaryDirectory(prefix="wanlab-ship-") as local:
            for name, data in files.items():
                source = Path(local) / "file"
                source.write_bytes(data)
                remote = f"{folder}/{temporary[name]}"
                self._check(self.ssh.put(source, remote, hosts=[host.name]))
        rename = (
            "import os, sys\nbase = sys.argv[1]\nfor old, new in zip(sys.argv[2::2], "
            "sys.argv[3::2]):\n    os.replace(os.path.join(base, old), "
            "os.path.join(base, new))"
        )
        pairs = [word for name in files for word in (temporary[name], name)]
        self._check(self.ssh.run([host.python, "-c", rename, folder, *pairs], hosts=[host.name]))

    @staticmethod
    def _check(results: dict) -> str:
        for result in results.values():
            if not result.ok:
                raise RuntimeError(result.error or result.stderr.strip()[-300:])
            return result.stdout
        return ""

    def _versions(self, workload: WorkloadSpec, host: Host) -> dict:
        python = workload_python(workload, host)
        out = self._check(
            self.ssh.run([python, "-c", VERSIONS, *workload.versions], hosts=[host.name])
        )
        return json.loads(out)

    def _run_request(self, specs: list[dict], workload: WorkloadSpec, host: Host, limit_s: float):
        path = self.prepared.get(workload.name, Prepared()).path.get(host.name, [])
        pythonpath = []
        if workload.table.timing == "lightning":
            pythonpath = [f"{workdir(workload, host)}/{LIGHTNING_PATH}"]
        return {
            "processes": specs,
            "deadline_s": limit_s + 30,
            "path": path,
            "pythonpath": pythonpath,
        }

    def _send(self, name: str, message: dict) -> None:
        try:
            self.streams[name].send_line(json.dumps(message))
        except (OSError, paramiko.SSHException):
            pass  # its reader sees the stream end

    def _drain(self, name: str, timeout_s: float) -> dict[int, dict]:
        """Every exit report of one job host until it says done (or ends, or `timeout_s`)."""
        reports: dict[int, dict] = {}
        deadline = time.monotonic() + timeout_s
        stream = self.streams[name]
        while True:
            try:
                message = stream.read_message(MARK, max(deadline - time.monotonic(), 0.01))
            except (TimeoutError, OSError, paramiko.SSHException, ValueError):
                return reports
            if message is None or "done" in message:
                return reports
            if "exit" in message:
                reports[message["exit"]["rank"]] = message["exit"]

    def _close(self, name: str) -> None:
        stream = self.streams.pop(name, None)
        if stream is not None:
            stream.close()

    def run(
        self,
        workload: WorkloadSpec,
        cell_values: dict[str, object],
        hosts: list[Host],
        run_name: str,
        cell_s: float,
        facts: dict[str, dict],
        shape: Callable[[], str | None],
        probe: Callable[[], None],
    ) -> JobResult:
        """Run one cell whose rank r runs on `hosts[r]`: start the job hosts, shape (a reason
        from `shape` ends the cell), probe, start the job, wait, stop, decide."""
        placement = {rank: host.name for rank, host in enumerate(hosts)}
        unique = list({host.name: host for host in hosts}.values())
        failed = [self.prepared.get(workload.name, Prepared()).failed.get(h.name) for h in unique]
        failed = [why for why in failed if why]
        if failed:
            return JobResult(Outcome(False, failed[0], None, None), [], {}, placement, 0.0)
        ready, lost = self._ready(unique)
        if lost:
            self._stop_streams(list(ready))
            name, why = next(iter(lost.items()))
            reason = f"the job host did not start on {name}: {why}"
            return JobResult(Outcome(False, reason, None, None), [], {}, placement, 0.0)
        for name in ready:
            ready[name]["interface"] = (facts.get(name) or {}).get("interface")
        reason = shape()
        if reason is not None:
            self._stop_streams(list(ready))
            return JobResult(Outcome(False, reason, None, None), [], {}, placement, 0.0)
        probe()
        plan = processes(workload, cell_values, hosts, ready, run_name)
        started = time.monotonic()
        for host in unique:
            specs = [p.request() for p in plan if p.host.name == host.name]
            self._send(host.name, {"run": self._run_request(specs, workload, host, cell_s)})
        reports, lost, timed_out = self._watch(plan, unique, workload, cell_s)
        seconds = time.monotonic() - started
        for report in reports.values():
            report["host"] = placement[report["rank"]]
        outcome = decide(workload, reports, lost, cell_s if timed_out else None, len(hosts))
        return JobResult(
            outcome,
            _process_records(plan, reports, outcome.ok),
            _shown_env(plan[0], workload),
            placement,
            seconds,
        )

    def _watch(
        self, plan: list[Process], hosts: list[Host], workload: WorkloadSpec, cell_s: float
    ) -> tuple[dict[int, dict], dict[str, str], bool]:
        """Wait for every process; stop every host on the first failure, a lost host, the
        timing rank's exit (after LINGER_S) or the limit."""
        events: queue.Queue = queue.Queue()
        for host in hosts:
            threading.Thread(target=self._read, args=(host.name, events), daemon=True).start()
        reports: dict[int, dict] = {}
        lost: dict[str, str] = {}
        done: set[str] = set()
        deadline = time.monotonic() + cell_s
        stop_at: float | None = None
        stopped = timed_out = False
        timing_rank = workload.table.timing_rank
        try:
            while len(done) < len(hosts):
                now = time.monotonic()
                if not stopped and now >= deadline:
                    timed_out = True
                if not stopped and (timed_out or (stop_at is not None and now >= stop_at)):
                    stopped = True
                    for host in hosts:
                        self._send(host.name, {"stop": True})
                    deadline = now + STOP_S
                elif stopped and now >= deadline:
                    break  # job hosts that did not answer: stop_streams kills them by PID
                wait = min(deadline, stop_at or deadline) - now
                try:
                    name, message = events.get(timeout=max(wait, 0.01))
                except queue.Empty:
                    continue
                if message is None or "lost" in message:  # it ended without saying done
                    done.add(name)
                    lost[name] = "its connection ended" if message is None else message["lost"]
                    stop_at = now if stop_at is None else min(stop_at, now)
                    continue
                if "done" in message:
                    done.add(name)
                    continue
                if "exit" in message:
                    report = message["exit"]
                    reports[report["rank"]] = report
                    failed = report.get("code") or report.get("signal") or report.get("start_error")
                    if failed and not report.get("stopped"):
                        stop_at = now if stop_at is None else min(stop_at, now)
                    elif report["rank"] == timing_rank and stop_at is None:
                        stop_at = now + LINGER_S
        finally:
            self._stop_streams([h.name for h in hosts])
        finished = {p.rank for p in plan} <= set(reports)
        if finished:
            lost = {}
        return reports, lost, timed_out

    def _read(self, name: str, events: queue.Queue) -> None:
        stream = self.streams[name]
        while True:
            try:
                message = stream.read_message(MARK, 3600.0)
            except TimeoutError:
                continue
            except (OSError, paramiko.SSHException, ValueError) as error:
                events.put((name, {"lost": str(error) or type(error).__name__}))
                return
            events.put((name, message))
            if message is None or "done" in message:
                return

    def _stop_streams(self, names: list[str]) -> None:
        """Close these hosts' job host streams (end of input: each kills its tree) and end
        any job host still there by its recorded PID."""
        for name in names:
            self._close(name)
        hosts = {h.name: h for h in self.fleet.hosts}
        self.ssh.run(self._stop_command, hosts=[n for n in names if n in hosts], timeout=STOP_S)

    def _stop_command(self, host: Host) -> list[str]:
        return [host.python, "-c", BOOT, self.code[host.name], "stop", self._pid_file(host)]

    def stop_all(self, ssh: FleetSSH | None = None) -> None:
        """End every job host this launcher may have left on any host, and what they marked."""
        for name in list(self.streams):
            self._close(name)
        (ssh or self.ssh).run(self._stop_command, timeout=STOP_S)


def _process_records(plan: list[Process], reports: dict[int, dict], ok: bool) -> list[dict]:
    """Per rank what the record keeps: host, exit, whether wanlab stopped it; the last lines
    when the cell failed."""
    kept = []
    for process in plan:
        report = reports.get(process.rank, {})
        entry = {
            "rank": process.rank,
            "host": process.host.name,
            "code": report.get("code"),
            "signal": report.get("signal"),
            "stopped": report.get("stopped"),
            "seconds": report.get("seconds"),
        }
        if not ok:
            entry["tail"] = report.get("tail", [])
        kept.append(entry)
    return kept


def _shown_env(process: Process, workload: WorkloadSpec) -> dict[str, str]:
    """Rank 0's environment as wanlab set it; the workload's own values only by name (they
    may be tokens)."""
    own = set(workload.table.env)
    return {k: ("(set by the workload)" if k in own else v) for k, v in process.env.items()}
