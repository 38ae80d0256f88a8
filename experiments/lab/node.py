"""The delay node: a user-mode Linux kernel that forwards between the local fleet's hosts and
shapes every host's egress for it, for machines whose own kernel has no sch_netem.

The hosts stay network namespaces on the host kernel (fast, every core); their links run
through the node, which shapes each host's egress on its behalf (nodeserve.py, inside the node)
and is reached through a mailbox folder (netem/mailbox.py). This module boots the node, says
why it did not start when it does not, and stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.lab.kernel import (
    MODULE_FAILED,
    Kernel,
    KernelError,
    boot_argv,
    current,
    describe,
    init_prelude,
    panic_line,
)
from inventory.safewrite import open_append, write_file
from netem.mailbox import FORWARDING_FILE, READY_FILE, REQUESTS, RESPONSES, STOP_FILE, MailboxAgent

KERNEL_FILE = "kernel.json"
"""Where in its mailbox the node says which kernel it boots (kernel.describe())."""


class DelayNodeError(RuntimeError):
    """The delay node did not start: `cause` (from its console or logs), `remedy`, and the exit
    code the command line ends with (2: fix this machine's set-up; 1: it may pass on a retry)."""

    def __init__(self, cause: str, remedy: str, exit_code: int):
        super().__init__(f"the delay node did not start: {cause}; {remedy}")
        self.cause, self.remedy, self.exit_code = cause, remedy, exit_code


class DelayNode:
    """Boot and stop the node; `directory` holds its mailbox, init script and logs."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.mailbox = MailboxAgent(self.directory)
        self.pid_file = self.mailbox.pid_file

    def pid(self) -> int | None:
        """PID of the running node's kernel process, else None."""
        return self.mailbox.pid()

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
        for folder in (REQUESTS, RESPONSES):
            (self.directory / folder).mkdir(exist_ok=True)
        stale_files = (READY_FILE, STOP_FILE, "returncode", "node.log", "console.log",
                       FORWARDING_FILE)  # fmt: skip
        for stale in (*stale_files, MODULE_FAILED):
            (self.directory / stale).unlink(missing_ok=True)
        write_file(self.directory / KERNEL_FILE, json.dumps(describe(), indent=2), None)
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
        while not (self.directory / READY_FILE).exists():
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
        serve = [
            sys.executable,
            "-m",
            "experiments.lab.nodeserve",
            str(self.directory),
            str(n_vecs),
        ]
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
            return json.loads((self.directory / READY_FILE).read_text())["release"]
        except (OSError, ValueError, KeyError):
            return None

    def record_forwarding(self, measurement: dict) -> None:
        """Keep the measured forwarding latency (`one_way_ms_at_delay`, and how it was
        measured)."""
        write_file(self.directory / FORWARDING_FILE, json.dumps(measurement, indent=2), None)

    def stop(self, timeout: float = 20.0) -> None:
        """Halt the node (its kernel forgets every qdisc); kill it by PID if it will not halt."""
        pid = self.pid()
        if pid is None:
            return
        write_file(self.directory / STOP_FILE, "", None, sync=False)
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
