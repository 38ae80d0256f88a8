"""The job host: runs one cell's processes of a user's training job on this host, and ends them.

Started by the controller over SSH, one per host and cell, as
`python -c BOOT ZIP serve PIDFILE` (see `experiments.workload.launch`). It speaks JSON lines
marked `WANLAB-JOB ` on stdout and reads JSON lines on stdin:

1. it becomes a child subreaper (every orphan of its tree stays its child), writes PIDFILE
   (`{"pid", "marker"}`) and says `{"ready": …}` with a free port, its CPUs and the kernel's
   boot id;
2. on `{"run": {"processes": [...], "deadline_s": …}}` it starts each process in a session of
   its own, output and errors into `OUT/output.log`; the timing process's lines go through its
   parser (`trainer.steptimes`) as they arrive;
3. it says `{"exit": …}` for each process that ends (code, signal, its last lines, and the
   timing process's steps);
4. on `{"stop": true}`, the end of its input (the controller is gone), SIGTERM/SIGHUP or its
   deadline it kills every process of its tree and every process marked with its marker,
   reports the processes it stopped, says `{"done": …}` and exits; it does the same once every
   process has ended, so nothing a job left behind outlives its cell.

`stop PIDFILE…` ends the job hosts those files name (checking each PID is still a job host, so
a recycled PID is never killed) and every process they marked. Standard library only.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from inventory.safewrite import write_file
from trainer import proctree
from trainer.steptimes import InvalidTiming, parser_for

MARK = "WANLAB-JOB "
TAIL_LINES = 20
MAX_LINE = 64 * 1024
STRIPPED = ("TORCHELASTIC_", "SLURM_", "OMPI_", "PMI_", "PMIX_")
"""Launcher and scheduler variables a session may carry that change how jobs find their ranks:
removed unless the workload sets them."""
_LINE_END = re.compile(rb"[\r\n]")
_print_lock = threading.Lock()


def say(**fields) -> None:
    """Print one protocol line."""
    with _print_lock:
        sys.stdout.write(MARK + json.dumps(fields) + "\n")
        sys.stdout.flush()


def free_port() -> int:
    """A port below the ephemeral range (an outgoing connection cannot take it meanwhile) that
    binds on every interface now."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(50):
        port = random.randint(20000, max(20001, low - 1))
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    raise OSError("no free port below the ephemeral range")


def boot_id() -> str:
    """This kernel's boot id: hosts with the same one share a machine's CPUs."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return ""


def job_environment(
    env: dict[str, str], marker: str, path: list[str], pythonpath: list[str]
) -> dict[str, str]:
    """The session's environment without launcher variables, the folders `path` and
    `pythonpath` leading PATH and PYTHONPATH, then the job's variables and the marker."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED)}
    for name, folders in (("PATH", path), ("PYTHONPATH", pythonpath)):
        if folders:
            base[name] = os.pathsep.join([*folders, *filter(None, [base.get(name)])])
    return {"PYTHONUNBUFFERED": "1", **base, **env, "WANLAB_JOB": marker}


def _split_lines(data: bytes, pending: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (ended by \\n or \\r: a progress bar's updates are lines) and the rest;
    a line is cut at MAX_LINE bytes."""
    *lines, rest = _LINE_END.split(pending + data)
    while len(rest) > MAX_LINE:
        lines.append(rest[:MAX_LINE])
        rest = rest[MAX_LINE:]
    return [line for line in lines if line], rest


class JobProcess:
    """One process of the cell on this host: started, its output logged, tailed and parsed."""

    def __init__(self, spec: dict, marker: str, path: list[str], pythonpath: list[str]):
        self.rank = spec["rank"]
        self.out = spec["out"]
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        timing = spec.get("timing")
        self.parser = parser_for(timing["kind"], timing.get("pattern")) if timing else None
        self.limit = timing["iterations"] * 2 + 10 if timing else 0
        self.steps: list[dict] = []
        self.invalid: str | None = None
        self.stopped = False
        self.start_error: str | None = None
        self.started = time.monotonic()
        self.reader: threading.Thread | None = None
        os.makedirs(self.out, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        self.log = os.fdopen(os.open(os.path.join(self.out, "output.log"), flags, 0o644), "wb")
        try:
            self.popen = subprocess.Popen(
                spec["argv"], cwd=spec["cwd"],
                env=job_environment(spec["env"], marker, path, pythonpath),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        except OSError as error:
            self.popen = None
            self.start_error = str(error)
            self.log.close()

    def read(self) -> None:
        """Log, tail and parse the output until the process closes it."""
        pending = b""
        while chunk := self.popen.stdout.read1(65536):
            self.log.write(chunk)
            self.log.flush()
            lines, pending = _split_lines(chunk, pending)
            for line in lines:
                self._line(line.decode(errors="replace"))
        if pending:
            self._line(pending.decode(errors="replace"))
        self.log.close()

    def _line(self, text: str) -> None:
        self.tail.append(text)
        if self.parser is None or self.invalid is not None or len(self.steps) >= self.limit:
            return
        try:
            step = self.parser.feed(text)
        except InvalidTiming as error:
            self.invalid = f"line {len(self.tail)}: {error}"
            return
        if step is not None:
            at = time.monotonic() - self.started
            self.steps.append({"iteration_s": step.iteration_s, "phases": step.phases, "at": at})

    def report(self) -> dict:
        """The process's exit, as the controller reads it."""
        code = self.popen.returncode if self.popen is not None else None
        report = {
            "rank": self.rank,
            "code": code if code is None or code >= 0 else None,
            "signal": signal.Signals(-code).name if code is not None and code < 0 else None,
            "at": time.time(),
            "seconds": time.monotonic() - self.started,
            "stopped": self.stopped,
            "tail": list(self.tail),
            "start_error": self.start_error,
        }
        if self.parser is not None:
            report |= {"steps": self.steps, "invalid": self.invalid, "hint": self.parser.hint}
        return report


class JobHost:
    """The processes of one cell on this host, and the events that end them."""

    def __init__(self, marker: str):
        self.marker = marker
        self.events: queue.Queue = queue.Queue()
        self.processes: list[JobProcess] = []
        self.running: set[int] = set()

    def listen(self) -> None:
        """Turn each line of stdin into an event; its end too."""
        for line in sys.stdin:
            try:
                self.events.put(("message", json.loads(line)))
            except ValueError:
                continue
        self.events.put(("eof", None))

    def start(self, run: dict) -> None:
        """Start every process of `run` and a reader for each."""
        for spec in run["processes"]:
            process = JobProcess(spec, self.marker, run.get("path", []), run.get("pythonpath", []))
            self.processes.append(process)
            if process.popen is None:
                say(exit=process.report())
                continue
            self.running.add(process.rank)
            process.reader = threading.Thread(target=self._follow, args=(process,), daemon=True)
            process.reader.start()

    def _follow(self, process: JobProcess) -> None:
        process.read()
        process.popen.wait()
        self.events.put(("exited", process))

    def serve(self) -> int:
        """Wait for the run, run it, end everything; the exit code of the job host."""
        deadline = None
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                kind, value = self.events.get(timeout=timeout)
            except queue.Empty:
                break  # the deadline
            if kind == "eof" or (kind == "message" and value.get("stop")):
                break
            if kind == "message" and "run" in value:
                run = value["run"]
                deadline = time.monotonic() + float(run["deadline_s"])
                self.start(run)
            elif kind == "exited":
                self.running.discard(value.rank)
                say(exit=value.report())
            if deadline is not None and not self.running:
                break
        return self.finish()

    def finish(self) -> int:
        """Kill whatever is left of the tree and report the processes still running then."""
        left = [p for p in self.processes if p.rank in self.running]
        for process in left:
            process.stopped = process.popen.poll() is None
        waited = {p.popen.pid for p in self.processes if p.popen is not None}
        killed = proctree.kill_tree(self.marker, keep=waited)
        for process in left:
            process.popen.wait()
            process.reader.join(timeout=5)  # it logs and parses the last output
            say(exit=process.report())
        proctree.reap(set())
        say(done={"killed": killed})
        return 0


def serve(pid_file: str) -> int:
    """Run as the job host of one cell on this host."""
    proctree.become_subreaper()
    marker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(6)}"
    write_pid_file(pid_file, marker)
    host = JobHost(marker)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: host.events.put(("eof", None)))
    threading.Thread(target=host.listen, daemon=True).start()
    say(ready={"pid": os.getpid(), "marker": marker, "port": free_port(),
               "cpus": len(os.sched_getaffinity(0)), "boot_id": boot_id()})  # fmt: skip
    try:
        return host.serve()
    finally:
        _remove(pid_file)


def write_pid_file(path: str, marker: str) -> None:
    """Record this job host's PID and marker at `path`, never through a link there."""
    write_file(path, json.dumps({"pid": os.getpid(), "marker": marker}), "pid file", sync=False)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _is_job_host(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in words and any(b"trainer.jobhost" in word for word in words)


def stop(pid_files: list[str]) -> int:
    """End the job hosts these files name and every process they marked."""
    for path in pid_files:
        try:
            with open(path, "rb") as file:
                recorded = json.loads(file.read(4096))
            pid, marker = int(recorded["pid"]), str(recorded["marker"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _is_job_host(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(50):
            left = [p for p in proctree.marked(marker) if p != pid]
            if not left:
                break
            for victim in left:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        _remove(path)
    return 0


def main(argv: list[str]) -> int:
    """`serve PIDFILE` or `stop PIDFILE…`."""
    if argv[:1] == ["serve"] and len(argv) == 2:
        return serve(argv[1])
    if argv[:1] == ["stop"]:
        return stop(argv[1:])
    print("usage: serve PIDFILE | stop PIDFILE...", file=sys.stderr)
    return 2


BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from trainer.jobhost import main; "
    "sys.exit(main(sys.argv[2:]))"
)
"""The `python -c` program that starts a job host from the shipped code zip (argv: ZIP, verb…)."""
