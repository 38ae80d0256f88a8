"""The hosts' own agents, one persistent `python -m netem.agentserve` per host over an SSH
stream each: started once, asked in parallel, every answer matched to its request."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paramiko

from inventory.ssh import FleetSSH, Stream
from netem.agentserve import MARK as AGENT_MARK

Requests = dict[str, dict[str, Any]]
"""Per host name, one agent request (or answer)."""


class ServedAgents:
    """One persistent agent (`python -m netem.agentserve`) per host, over an SSH stream each
    (`start` starts them; a request to a host not started yet starts its agent first)."""

    def __init__(self, ssh: FleetSSH, code: dict[str, str], pool: ThreadPoolExecutor):
        self.ssh = ssh
        self.code = code
        self.pool = pool
        self.streams: dict[str, Stream] = {}
        self.pids: dict[str, int] = {}  # each agent's PID on its host
        self.locks: dict[str, threading.Lock] = {}  # one request at a time per stream
        self.request_ids: dict[str, int] = {}  # the last request's id per stream

    def start(self, names: list[str], timeout_s: float) -> dict[str, str]:
        """Start the agents of `names` that are not running yet; why, per host whose agent
        did not start."""
        failed: dict[str, str] = {}
        new = []
        for name in names:
            if name in self.streams:
                continue
            host = self.ssh.fleet.host(name)
            argv = [host.python, "-m", "netem.agentserve"]
            try:
                self.streams[name] = self.ssh.open_stream(
                    name, argv, {"PYTHONPATH": self.code[name]}
                )
            except (OSError, EOFError, paramiko.SSHException) as error:
                failed[name] = f"{type(error).__name__}: {error}"
                continue
            self.locks[name] = threading.Lock()
            new.append(name)
        ready = dict(zip(new, self.pool.map(lambda n: self._read(n, timeout_s), new), strict=True))
        for name, answer in ready.items():
            if "ready" in answer:
                self.pids[name] = answer["pid"]
            else:
                failed[name] = answer.get("error") or "no ready message"
                self._forget(name)
        return failed

    def _forget(self, name: str) -> None:
        """Drop a host's stream (a later request starts a new agent there)."""
        stream = self.streams.pop(name, None)
        if stream is not None:
            stream.close()

    def _read(self, name: str, timeout_s: float, request_id: int | None = None) -> dict[str, Any]:
        """The agent's next message (with `request_id`, skipping late answers to requests that
        timed out before), or an error answer if none comes within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                left = max(deadline - time.monotonic(), 0.001)
                message = self.streams[name].read_message(AGENT_MARK, left)
            except TimeoutError as error:
                return {"ok": False, "error": str(error), "error_kind": "transport"}
            if message is None:
                said = self.streams[name].chatter[-1:]  # e.g. the agent's last traceback line
                error = "the agent ended" + (f": {said[0].strip()}" if said else "")
                return {"ok": False, "error": error, "error_kind": "transport"}
            if message.pop("id", None) == request_id:
                return message

    def _one(self, name: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        started = time.monotonic()
        with self.locks[name]:
            self.request_ids[name] = request_id = self.request_ids.get(name, 0) + 1
            try:
                self.streams[name].send_line(json.dumps({**request, "id": request_id}))
                answer = self._read(name, timeout_s, request_id)
            except (OSError, EOFError, paramiko.SSHException) as error:  # the host is lost
                answer = {"ok": False, "error": f"lost: {error}", "error_kind": "transport"}
                self._forget(name)
        return {**answer, "host": name, "seconds": round(time.monotonic() - started, 3)}

    def call(self, requests: Requests, timeout_s: float) -> Requests:
        """Every host's answer to its request, all hosts in parallel (a host whose agent
        cannot be started answers with the reason)."""
        failed = self.start(list(requests), timeout_s)
        answers = {name: {"ok": False, "error": f"the agent did not start: {reason}",
                          "error_kind": "transport", "host": name}
                   for name, reason in failed.items()}  # fmt: skip
        futures = {
            n: self.pool.submit(self._one, n, r, timeout_s)
            for n, r in requests.items()
            if n not in failed
        }
        answers.update({name: future.result() for name, future in futures.items()})
        return {name: answers[name] for name in requests}

    def close(self) -> None:
        """Close the streams; each agent then lives on only while its leases run."""
        for stream in self.streams.values():
            stream.close()
