"""The agent as one long-lived process: `python -m netem.agentserve`, JSON lines in and out.

Starting Python and importing pyroute2 costs far more than shaping an interface, so the
controller keeps one of these per host (over an SSH stream) and sends it requests, one JSON
object per line: the agent's own (`{"verb": "apply", "interface": "eth0", "tree": {…},
"lease_s": 30}`, see `netem.agent`) and the probe's (`{"verb": "probe-serve", "bind": …,
"port": …}` starts a probe server that lives as long as this process; `{"verb":
"probe-measure", "to": …, "port": …, "count": …, "seconds": …}` measures), so probing costs no
Python start-up either. Each answer is one line, `WANLAB-AGENT {…}`, carrying the request's
`id` when it had one (so an answer that comes after its asker gave up is never taken for the
next one's).

This process holds the leases of what it applied (no watchdog process): when its input ends
(the controller is gone) it keeps going until every lease has run out, reverts, and exits.
"""

from __future__ import annotations

import errno
import json
import os
import select
import sys
import threading
import time
from typing import Any

from netem import probe
from netem.agent import Agent  # the expensive imports (pyroute2), once, before "ready"

MARK = "WANLAB-AGENT "
POLL_S = 0.1


class ProbeServers:
    """The probe servers this process runs, one per (address, port), for its lifetime."""

    def __init__(self):
        self.listening: set[tuple[str, int]] = set()

    def serve(self, bind: str, port: int, warmup_s: float = 1.0) -> dict[str, Any]:
        """Listen on (bind, port) unless already listening; returns once it listens."""
        if (bind, port) not in self.listening:
            try:
                server = probe.open_server(bind, port)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                # Another agent on this host listens there already (an earlier controller's,
                # which lives on while its leases run): it answers the same probe.
                return {"ok": True, "port": port, "served_by": "another agent"}
            forever = float("inf")
            threading.Thread(
                target=probe.serve_on, args=(server, forever, warmup_s), daemon=True
            ).start()
            self.listening.add((bind, port))
        return {"ok": True, "port": port}


def answer(agent, probes: ProbeServers, request: dict[str, Any]) -> dict[str, Any]:
    """One request's answer: the probe's verbs here, every other verb by the agent."""
    verb = request.get("verb")
    try:
        if verb == "probe-serve":
            return probes.serve(request["bind"], int(request["port"]))
        if verb == "probe-measure":
            fields = ("to", "port", "count", "seconds")
            share = bool(request.get("receive_share", True))
            return probe.measure(*(request[field] for field in fields), receive_share=share)
    except KeyError as missing:
        return {"ok": False, "error": f"{verb} needs {missing}", "error_kind": "input"}
    except OSError as error:
        return {"ok": False, "error": f"probe: {error}", "error_kind": "probe"}
    return agent.handle(request)


def serve() -> int:
    """Answer requests on stdin until it ends, then outlive the leases still running."""
    agent, probes = Agent(), ProbeServers()
    print(MARK + json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        agent.revert_expired()
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip():
            request = json.loads(line)
            request_id = request.pop("id", None)
            reply = answer(agent, probes, request)
            print(MARK + json.dumps({**reply, "id": request_id}), flush=True)
    while agent.revert_expired():  # the controller is gone: the dead-man revert still fires
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
