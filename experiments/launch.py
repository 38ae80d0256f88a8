"""Launch the trainer on the fleet for one cell: place ranks, start them over SSH, collect rank 0.

Every worker records its PID in a file on its host before it becomes the trainer, so a
controller that is interrupted stops exactly the processes it started.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import paramiko

from inventory.models import Fleet, Host
from inventory.ship import ship_code
from inventory.ssh import FleetSSH, Stream
from trainer.config import TrainerConfig
from trainer.worker import GO, MARK, START

TRAINER_CODE = (
    "trainer/*.py",
    "inventory/__init__.py",
    "inventory/errors.py",
    "inventory/ports.py",
    "inventory/safewrite.py",
    "inventory/tomlfile.py",
)
_RECORD_PID_THEN_EXEC = 'echo $$ > "$0"; exec "$@"'
_KILL_RECORDED = (
    'for f in "$@"; do if [ -f "$f" ]; then kill -TERM "$(cat "$f")" 2>/dev/null; rm -f "$f"; '
    "fi; done; true"
)


@dataclass
class LaunchResult:
    """What one launch gave: rank 0's summary if it finished, else why not."""

    ok: bool
    summary: dict | None
    reason: str | None
    placement: dict[int, str]
    seconds: float


def trainer_flags(config: TrainerConfig) -> list[str]:
    """The `python -m trainer` flags that reproduce `config` (out and iface excluded)."""
    flags = []
    for name, value in config.model_dump(exclude={"out", "iface"}, exclude_none=True).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            flags += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


@dataclass(frozen=True)
class Seat:
    """One rank's place on a host: the host and which of its slots (GPUs) the rank takes."""

    host: Host
    slot: int

    @property
    def key(self) -> str:
        """The worker's name: the host's, with `.slot` after it from the second slot on."""
        return self.host.name if self.slot == 0 else f"{self.host.name}.{self.slot}"


def seats_of(hosts: list[Host]) -> list[Seat]:
    """Each rank's seat: a host's k-th rank takes its slot k."""
    taken: dict[str, int] = {}
    seats = []
    for host in hosts:
        seats.append(Seat(host, taken.get(host.name, 0)))
        taken[host.name] = seats[-1].slot + 1
    return seats


class WorkerLost(RuntimeError):
    """A worker rank ended, timed out or never started."""


class TrainerLauncher:
    """Runs trainer cells on a fleet through long-lived worker ranks, one per host.

    A worker (`python -m trainer.worker`) imports torch once and then runs one rank per request,
    so the cost of starting Python and torch is paid once per matrix, not once per cell. A
    worker whose run failed exits; it is started again for the next cell that needs its host.
    """

    def __init__(self, fleet: Fleet, ssh: FleetSSH, start_timeout_s: float = 300.0):
        self.fleet = fleet
        self.ssh = ssh
        self.start_timeout_s = start_timeout_s
        self.code = ship_code(ssh, fleet, TRAINER_CODE, "wanlab-trainer")
        self.workers: dict[str, Stream] = {}

    def _pid_file(self, host: Host, slot: int = 0) -> str:
        # Named per seat: hosts of a local fleet share one file system.
        key = Seat(host, slot).key
        return str(PurePosixPath(host.workdir) / f"trainer-worker-{key}.pid")

    def _reply(self, key: str, timeout_s: float) -> dict:
        """Worker `key`'s next protocol message; WorkerLost if it ends or stays silent."""
        stream = self.workers[key]
        try:
            message = stream.read_message(MARK, timeout_s)
        except TimeoutError:
            raise WorkerLost(f"no answer within {timeout_s:g} s") from None
        if message is None:
            last = stream.chatter[-1] if stream.chatter else "no output"
            raise WorkerLost(f"the worker ended: {last}")
        return message

    def _start(self, seats: list[Seat], pool: ThreadPoolExecutor) -> None:
        new = [seat for seat in seats if seat.key not in self.workers]
        for seat in new:
            host = seat.host
            env = {"PYTHONPATH": self.code[host.name]}
            argv = ["sh", "-c", _RECORD_PID_THEN_EXEC, self._pid_file(host, seat.slot),
                    host.python, "-m", "trainer.worker"]  # fmt: skip
            self.workers[seat.key] = self.ssh.open_stream(host.name, argv, env)
        pending = {s.key: pool.submit(self._reply, s.key, self.start_timeout_s) for s in new}
        for name, ready in pending.items():
            try:
                first = ready.result()
            except WorkerLost as error:
                raise WorkerLost(f"{name}: {error}") from None
            if not first.get("ready"):
                raise WorkerLost(f"{name}: unexpected first answer {first}")

    def start_workers(self, hosts: list[Host]) -> None:
        """Start the workers of a cell's ranks (rank r on `hosts[r]`) ahead of the first cell
        (raises WorkerLost, OSError)."""
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            self._start(seats_of(hosts), pool)

    def run(
        self,
        config: TrainerConfig,
        hosts: list[Host],
        run_name: str,
        timeout_s: float,
        prepare: Callable[[], str | None] | None = None,
        while_joining: Callable[[], None] | None = None,
    ) -> LaunchResult:
        """Run one cell on its ranks' workers (rank r on `hosts[r]`) and return rank 0's summary.

        The ranks first build their stages; then `prepare` runs (the runner shapes the network
        there). Unless it returns a reason to stop, the ranks join their process group on the
        shaped network while `while_joining` runs beside them (the runner probes the network),
        then they train.
        `LaunchResult.seconds` counts from "go" to the last answer.
        """
        placement = {rank: host.name for rank, host in enumerate(hosts)}
        seats = seats_of(hosts)
        started = time.monotonic()
        port = random.randint(20000, 40000)
        flags = trainer_flags(config)
        with ThreadPoolExecutor(max_workers=len(hosts) + 1) as pool:
            try:
                self._start(seats, pool)
            except (WorkerLost, OSError, paramiko.SSHException) as error:
                self.stop_all()
                return LaunchResult(False, None, f"starting workers: {error}", placement,
                                    time.monotonic() - started)  # fmt: skip
            for rank, seat in enumerate(seats):
                host = seat.host
                out = str(PurePosixPath(host.workdir) / "cells" / run_name / f"rank{rank}")
                iface = ["--iface", host.interface] if host.interface else []
                env = {"RANK": rank, "WORLD_SIZE": config.world_size, "LOCAL_RANK": seat.slot,
                       "MASTER_ADDR": hosts[0].address, "MASTER_PORT": port}  # fmt: skip
                request = {"argv": [*flags, "--out", out, *iface], "env": env}
                self.workers[seat.key].send_line(json.dumps(request))
            answers, lost = self._collect(seats, pool, timeout_s)
            built = _all_said(answers, lost, "built")
            reason = prepare() if built and prepare is not None else None
            started = time.monotonic()
            if built and reason is None:
                self._send(seats, GO)
                probing = pool.submit(while_joining) if while_joining is not None else None
                answers, lost = self._collect(seats, pool, timeout_s)
                if probing is not None:
                    probing.result()
                if _all_said(answers, lost, "joined"):
                    self._send(seats, START)
                    answers, lost = self._collect(seats, pool, timeout_s)
        seconds = time.monotonic() - started
        summary = answers.get(seats[0].key, {}).get("summary")
        if not lost and all(a.get("exit_code") == 0 for a in answers.values()) and summary:
            return LaunchResult(True, summary, None, placement, seconds)
        self.stop_all()  # a failed run leaves process groups unusable: start afresh
        reason = reason or _failure(seats, answers, lost)
        return LaunchResult(False, None, reason, placement, seconds)

    def _send(self, seats: list[Seat], line: dict) -> None:
        for seat in seats:
            self.workers[seat.key].send_line(json.dumps(line))

    def _collect(
        self, seats: list[Seat], pool: ThreadPoolExecutor, timeout_s: float
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """Every seat's next answer, and why for the seats that gave none."""
        replies = {s.key: pool.submit(self._reply, s.key, timeout_s) for s in seats}
        answers, lost = {}, {}
        try:
            for name, reply in replies.items():
                try:
                    answers[name] = reply.result()
                except WorkerLost as error:
                    lost[name] = str(error)
        except BaseException:  # Ctrl-C: close the channels so the waiting threads end now
            for stream in self.workers.values():
                stream.close()
            raise
        return answers, lost

    def stop_all(self, ssh: FleetSSH | None = None) -> None:
        """Stop every worker this launcher started, by the PID each one recorded."""
        for stream in self.workers.values():
            stream.close()
        self.workers.clear()
        (ssh or self.ssh).run(
            lambda h: ["sh", "-c", _KILL_RECORDED, "sh",
                       *(self._pid_file(h, slot) for slot in range(h.slots))],
            timeout=15,
        )  # fmt: skip


def _all_said(answers: dict[str, dict], lost: dict[str, str], key: str) -> bool:
    """Every host answered, and every answer says `key` (a worker that failed says why instead)."""
    return not lost and all(answer.get(key) for answer in answers.values())


def _failure(seats: list[Seat], answers: dict[str, dict], lost: dict[str, str]) -> str:
    """The clearest reason: a worker that was lost (the likely cause: its peers only saw it go)
    before a rank that failed, each in rank order, with its last words."""
    lost_reasons, failed_reasons = [], []
    for rank, seat in enumerate(seats):
        if seat.key in lost:
            lost_reasons.append(f"rank {rank} on {seat.key}: {lost[seat.key]}")
        elif answers[seat.key].get("exit_code", 0) != 0:
            failed_reasons.append(f"rank {rank} on {seat.key}: {answers[seat.key]['error']}")
    reasons = lost_reasons + failed_reasons
    if not reasons:
        return "rank 0 returned no summary"
    more = f" ({len(reasons) - 1} more rank(s) failed)" if len(reasons) > 1 else ""
    return reasons[0] + more
