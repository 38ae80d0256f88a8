"""The agent as one long-lived process: `python -m netem.agentserve`, JSON lines in and out.

Starting Python and importing pyroute2 costs far more than shaping an interface, so the
controller keeps one of these per host (over an SSH stream) and sends it agent command lines:
`{"argv": ["apply", "--interface", "eth0", "--lease", "300", "--tree", "…"]}` answered by
`WANLAB-AGENT {"exit_code": …, "stdout": "<the agent's JSON>", "stderr": …}`. The delay node
runs the same code behind its mailbox.

It also runs the network probe in-process (`{"argv": ["probe", "serve", …]}` starts a probe
server that lives as long as the agent; `["probe", "measure", …]` measures), so probing costs no
Python start-up either.

The dead-man revert lives here too, with no watchdog process: the lease of each interface is
kept in this process, which reverts the interface when the lease runs out. When its input ends
(the controller is gone) it keeps waiting until every lease has run out, reverts, and exits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import sys
import threading
import time

MARK = "WANLAB-AGENT "
POLL_S = 0.1


def run_agent(argv: list[str]) -> dict:
    """Run one `netem.agent` command in this process; its exit code and output."""
    from netem import agent

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            exit_code = agent.main(argv)
        except SystemExit as exit_:
            exit_code = exit_.code if isinstance(exit_.code, int) else 2
        except Exception as error:  # noqa: BLE001 - reported to the controller, we stay up
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            exit_code = 1
    return {"exit_code": exit_code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def _reply(exit_code: int, **answer) -> dict:
    return {"exit_code": exit_code, "stdout": json.dumps(answer), "stderr": ""}


class Leases:
    """Agent commands with their leases kept in this process instead of in watchdogs."""

    def __init__(self):
        self.until: dict[str | None, float] = {}

    def answer(self, argv: list[str]) -> dict:
        """Run one agent command line, holding its lease here."""
        command, interface = argv[0], _option(argv, "--interface")
        lease = _option(argv, "--lease")
        if command == "renew":
            if interface not in self.until:
                return _reply(
                    1,
                    ok=False,
                    command="renew",
                    interface=interface,
                    error=f"nothing is applied on {interface or 'the interface'}: "
                    "no lease to renew",
                    error_kind="no_lease",
                )
            self.until[interface] = time.time() + float(lease or 0)
            return _reply(
                0, ok=True, command="renew", interface=interface, lease_until=self.until[interface]
            )
        if command == "apply" and lease is not None and "--dry-run" not in argv:
            at = argv.index("--lease")
            result = run_agent([*argv[:at], *argv[at + 2 :], "--lease", "0"])
            if result["exit_code"] == 0 and float(lease) > 0:
                self.until[interface] = time.time() + float(lease)
                answer = json.loads(result["stdout"])
                result["stdout"] = json.dumps({**answer, "lease_until": self.until[interface]})
            return result
        if command == "reset":
            self.until.pop(interface, None)
        result = run_agent(argv)
        if command == "show" and result["exit_code"] == 0:
            answer = json.loads(result["stdout"])
            result["stdout"] = json.dumps({**answer, "lease_until": self.until.get(interface)})
        return result

    def revert_expired(self) -> None:
        """Reset every interface whose lease has run out."""
        now = time.time()
        for interface in [i for i, until in self.until.items() if until <= now]:
            run_agent(["reset", *(["--interface", interface] if interface else [])])
            del self.until[interface]


class ProbeServers:
    """The probe servers this agent runs, one per (address, port), for the agent's lifetime."""

    def __init__(self):
        self.listening: set[tuple[str, int]] = set()

    def answer(self, argv: list[str]) -> dict:
        """Run one `netem.probe` command line (`serve` returns once the server listens)."""
        from netem import probe

        try:
            args = probe.parse_args(argv)
            if args.command == "measure":
                return _reply(0, **probe.measure(args.to, args.port, args.count, args.seconds))
            if (args.bind, args.port) not in self.listening:
                server = probe.open_server(args.bind, args.port)
                forever = float("inf")
                threading.Thread(
                    target=probe.serve_on, args=(server, forever, args.warmup), daemon=True
                ).start()
                self.listening.add((args.bind, args.port))
            return _reply(0, ok=True, port=args.port)
        except SystemExit:
            return _reply(2, ok=False, error=f"bad probe command {argv!r}")
        except OSError as error:
            return _reply(1, ok=False, error=f"probe: {error}")


def serve() -> int:
    """Answer command lines on stdin until it ends, then outlive the leases still running."""
    import netem.agent  # noqa: F401 - the expensive imports, once, before "ready"

    leases, probes = Leases(), ProbeServers()
    print(MARK + json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        leases.revert_expired()
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip():
            argv = json.loads(line)["argv"]
            reply = probes.answer(argv[1:]) if argv[:1] == ["probe"] else leases.answer(argv)
            print(MARK + json.dumps(reply), flush=True)
    while leases.until:  # the controller is gone: the dead-man revert still fires on time
        leases.revert_expired()
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
