"""The agent behind a mailbox folder: how the controller reaches the delay node's agent.

The delay node (experiments/lab/node.py boots it, experiments/lab/nodeserve.py serves in it)
answers agent requests read from a folder on the host's files (the node's root is hostfs):
`requests/<id>.json` holds a batch of agent requests (one per host, so a fleet-wide verb costs
one round trip), `responses/<id>.json` their answers. `uml.pid` names the node's kernel
process, `ready.json` is written once the node serves, `stop` asks it to halt, and
`forwarding.json` holds the node's own latency as measured when the lab came up. This module
is the controller's side and the folder's layout, which both sides import.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inventory.safewrite import write_file

REQUESTS = "requests"
RESPONSES = "responses"
PID_FILE = "uml.pid"
READY_FILE = "ready.json"
STOP_FILE = "stop"
FORWARDING_FILE = "forwarding.json"
POLL_S = 0.01
"""How often the controller looks for an answer, and the node for requests while busy."""


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


class MailboxAgent:
    """The agent behind the mailbox folder `directory`, which shapes every host's egress on
    the node's interfaces; like the hosts' own agents it answers `call(requests)`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.requests = self.directory / REQUESTS
        self.responses = self.directory / RESPONSES
        self.pid_file = self.directory / PID_FILE

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

    def call(
        self, requests: dict[str, dict[str, Any]], timeout_s: float
    ) -> dict[str, dict[str, Any]]:
        """Every host's answer to its request, in one mailbox round trip."""
        started = time.monotonic()
        answers = self._round_trip(list(requests.values()), timeout_s)
        seconds = round(time.monotonic() - started, 3)
        return {
            name: {**answer, "host": name, "seconds": seconds, "shaped_on": "delay-node"}
            for name, answer in zip(requests, answers, strict=True)
        }

    def _round_trip(self, batch: list[dict], timeout: float) -> list[dict]:
        """The node's agent's answers to `batch`, in order."""

        def failed(error: str) -> list[dict]:
            return [{"ok": False, "error": error, "error_kind": "transport"}] * len(batch)

        if self.pid() is None:
            return failed("the delay node is not running")
        request_id = uuid.uuid4().hex
        response = self.responses / f"{request_id}.json"
        message = json.dumps({"batch": batch})
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

    def forwarding(self) -> ForwardingLatency:
        """The node's own one-way latency under netem, as measured when the lab came up; none
        until then. Every delay the node applies is less this."""
        try:
            measured = json.loads((self.directory / FORWARDING_FILE).read_text())
            points = [(float(d), float(ms)) for d, ms in measured["one_way_ms_at_delay"].items()]
        except (OSError, ValueError, KeyError, AttributeError):
            points = []
        return ForwardingLatency(tuple(sorted(points)))
