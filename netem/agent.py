"""The host agent: shape this machine's interfaces under a lease; one API behind three faces.

`Agent` is the API: `apply(interface, tree, lease_s)`, `show`, `reset`, `renew`, `status`, and
`revert_expired`; the host's TCP settings (`netem.tcp`) likewise, through `tcp_apply`,
`tcp_show`, `tcp_renew` and `tcp_reset`. Per interface, and for the TCP settings, it keeps in
a state folder what was there before wanlab touched it and when the lease runs out. Whoever
holds the agent calls `revert_expired` often, so a controller that dies never leaves a host
shaped (or its TCP changed):
- `python -m netem.agent VERB …` (this module's `main`) runs one verb and leaves one watchdog
  process per state folder that holds its leases until none is left;
- `python -m netem.agentserve`, the controller's persistent agent on each host, holds them in
  its own loop;
- the delay node (`experiments/lab/nodeserve.py`) holds them in its loop inside its kernel.
Every face passes requests `{"verb": …, "interface": …, "tree": …, "lease_s": …}` (or, for the
`tcp-*` verbs, `"tcp": …` instead of a tree) to `handle`,
which answers with a JSON-able dict: `ok`, and on failure `error` and `error_kind`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from netem import shaper, tcp
from netem.leases import StateFolder, held_by_another, refusal
from netem.tcp import TcpSettings
from netem.tree import Tree, tc_commands

DEFAULT_STATE_DIR = Path("/run/wanlab/netem")
DEFAULT_LEASE_S = 300.0
WATCHDOG_POLL_S = 0.25
LEASE_CHECK_S = 0.5
VERBS = ("apply", "show", "reset", "renew", "status")
TCP_VERBS = ("tcp-apply", "tcp-show", "tcp-reset", "tcp-renew")


class AgentError(Exception):
    """A failure the agent reports in its answer; `code` is the one-shot command's exit status."""

    def __init__(self, message: str, kind: str, code: int = 1):
        super().__init__(message)
        self.kind = kind
        self.code = code


class Request(BaseModel):
    """One verb for one interface (None: the default route's)."""

    model_config = ConfigDict(extra="forbid")

    verb: Literal["apply", "show", "reset", "renew", "status", *TCP_VERBS]
    interface: str | None = None
    tree: Tree | None = None
    tcp: TcpSettings | None = None
    lease_s: float = Field(DEFAULT_LEASE_S, ge=0, allow_inf_nan=False)
    """Seconds until the interface reverts unless renewed; 0 = never (apply only)."""
    owner: str | None = Field(None, max_length=200)
    """Who shapes: while one owner's shaping holds, another's apply, renew and reset are
    refused (two controllers must not interleave profiles on one fleet)."""
    force: bool = False
    """Reset even what another owner shapes (a person putting a fleet back by hand)."""


class Agent:
    """The interfaces of this machine (or network namespace) that wanlab shapes, and their leases.

    `watchdog`: start a watchdog process to hold the leases (the one-shot command); a face that
    runs for as long as its leases calls `revert_expired` itself instead.
    """

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, watchdog: bool = False):
        self.state = StateFolder(state_dir)
        self.watchdog = watchdog
        self._next_check = 0.0  # when revert_expired looks at the state folder again
        self._running = 0  # leases running at its last look

    def _check_owner(self, ifname: str, state: dict | None, owner: str | None, force: bool) -> None:
        """Refuse to touch `ifname` (or the TCP settings) while another owner holds it."""
        refused = refusal(ifname, state, owner, force)
        if refused is not None:
            raise AgentError(refused, "locked")

    def _revert(self, ifname: str, state: dict[str, Any]) -> None:
        shaper.restore(state["snapshot"])
        self.state.interface(ifname).unlink(missing_ok=True)

    def _revert_tcp(self, state: dict[str, Any]) -> None:
        tcp.restore(state["originals"])
        self.state.tcp.unlink(missing_ok=True)

    def _hold_lease(self) -> None:
        if self.watchdog:
            self.state.start_watchdog()

    # -- the verbs -------------------------------------------------------------------------------
    def apply(
        self, ifname: str, tree: Tree, lease_s: float = DEFAULT_LEASE_S, owner: str | None = None
    ) -> dict[str, Any]:
        """Shape `ifname` with `tree`, read it back, and take a lease (0 = none) for `owner`."""
        with self.state.locked():
            state = self.state.load(ifname)
            self._check_owner(ifname, state, owner, force=False)
            fresh = state is None
            if fresh:
                state = {"snapshot": shaper.snapshot(ifname)}
                self.state.save(ifname, state)
            try:
                result = shaper.apply(ifname, tree)
            except shaper.ShaperError as err:
                if fresh or not isinstance(err, shaper.NetemUnavailable):
                    self._revert(ifname, state)
                raise
            actual = shaper.read_tree(ifname)
            state["tree"] = tree.model_dump()
            state["owner"] = owner
            state["lease_until"] = time.time() + lease_s if lease_s > 0 else None
            self.state.save(ifname, state)
            if lease_s > 0:
                self._hold_lease()
        self._next_check = 0.0  # a new lease: the next revert_expired looks afresh
        return {
            "result": result,
            "matches": actual == shaper.normalized(tree),
            "shaping": None if actual is None else actual.describe(),
            "lease_until": state["lease_until"],
        }

    def show(self, ifname: str, owner: str | None = None) -> dict[str, Any]:
        """What the kernel holds on `ifname`, its counters, the lease, and whether an owner
        other than `owner` holds it."""
        tree = shaper.read_tree(ifname)
        state = self.state.load(ifname)
        asked = None if state is None or "tree" not in state else Tree.model_validate(state["tree"])
        return {
            "shaped": tree is not None,
            "tree": None if tree is None else tree.model_dump(),
            "shaping": None if tree is None else tree.describe(),
            "matches_applied": None if asked is None else tree == shaper.normalized(asked),
            "stats": shaper.read_stats(ifname),
            "lease_until": None if state is None else state.get("lease_until"),
            "owner": None if state is None else state.get("owner"),
            "held_by_another": held_by_another(state, owner),
        }

    def reset(self, ifname: str, owner: str | None = None, force: bool = False) -> dict[str, Any]:
        """Restore what was on `ifname` before wanlab; a no-op when nothing is applied."""
        with self.state.locked():
            state = self.state.load(ifname)
            if state is None:
                return {"result": "clean"}
            self._check_owner(ifname, state, owner, force)
            self._revert(ifname, state)
        return {"result": "restored"}

    def renew(
        self, ifname: str, lease_s: float = DEFAULT_LEASE_S, owner: str | None = None
    ) -> dict[str, Any]:
        """Extend the lease of `ifname` to `lease_s` seconds from now."""
        with self.state.locked():
            state = self.state.load(ifname)
            if state is None or "tree" not in state:
                raise AgentError(f"nothing is applied on {ifname}: no lease to renew", "no_lease")
            self._check_owner(ifname, state, owner, force=False)
            state["lease_until"] = time.time() + lease_s
            self.state.save(ifname, state)
            self._hold_lease()
        self._next_check = 0.0
        return {"lease_until": state["lease_until"]}

    def status(self, ifname: str) -> dict[str, Any]:
        """The lease of `ifname`, and the watchdog process holding this folder's leases."""
        state = self.state.load(ifname) or {}
        pid = self.state.watchdog_pid()
        return {
            "applied": "tree" in state,
            "lease_until": state.get("lease_until"),
            "watchdog_pid": pid,
            "watchdog_alive": pid is not None,
        }

    # -- the TCP settings: the same lease and owner rules, one state file -----------------------
    def tcp_apply(
        self, ifname: str, settings: TcpSettings, lease_s: float, owner: str | None = None
    ) -> dict[str, Any]:
        """Set the TCP settings, keep the originals until reset or the lease (0 = none) ends,
        and read them back."""
        with self.state.locked():
            state = self.state.read(self.state.tcp)
            self._check_owner("the TCP settings", state, owner, force=False)
            state = state or {"originals": {}}
            try:
                tcp.apply(ifname, settings, state["originals"])
            except tcp.TcpError:
                self._revert_tcp(state)  # as it was before wanlab, as a failed apply leaves it
                raise
            state["owner"] = owner
            state["lease_until"] = time.time() + lease_s if lease_s > 0 else None
            self.state.write(self.state.tcp, state)
            if lease_s > 0:
                self._hold_lease()
        self._next_check = 0.0
        actual = tcp.read(ifname)
        asked = settings.model_dump(exclude_none=True)
        return {
            "tcp": actual.model_dump(mode="json"),
            "mtu": tcp.interface_mtu(ifname),
            "matches": actual.model_dump(include=set(asked)) == asked,
            "lease_until": state["lease_until"],
        }

    def tcp_show(self, ifname: str, owner: str | None = None) -> dict[str, Any]:
        """The TCP settings as they are, the congestion controls this kernel has, and who
        holds the settings wanlab changed."""
        state = self.state.read(self.state.tcp)
        return {
            "tcp": tcp.read(ifname).model_dump(mode="json"),
            "mtu": tcp.interface_mtu(ifname),
            "congestion_controls": tcp.congestion_controls(),
            "changed": sorted(state["originals"].get("sysctls", {})) if state else [],
            "lease_until": None if state is None else state.get("lease_until"),
            "held_by_another": held_by_another(state, owner),
        }

    def tcp_reset(self, owner: str | None = None, force: bool = False) -> dict[str, Any]:
        """Put back the TCP settings wanlab changed; a no-op when it changed none."""
        with self.state.locked():
            state = self.state.read(self.state.tcp)
            if state is None:
                return {"result": "clean"}
            self._check_owner("the TCP settings", state, owner, force)
            self._revert_tcp(state)
        return {"result": "restored"}

    def tcp_renew(self, lease_s: float, owner: str | None = None) -> dict[str, Any]:
        """Extend the TCP settings' lease to `lease_s` seconds from now."""
        with self.state.locked():
            state = self.state.read(self.state.tcp)
            if state is None or "lease_until" not in state:
                raise AgentError("no TCP settings are applied: no lease to renew", "no_lease")
            self._check_owner("the TCP settings", state, owner, force=False)
            state["lease_until"] = time.time() + lease_s
            self.state.write(self.state.tcp, state)
            self._hold_lease()
        self._next_check = 0.0
        return {"lease_until": state["lease_until"]}

    def revert_expired(self) -> int:
        """Restore every interface whose lease has run out; how many leases still run.

        Looks at the state folder at most every LEASE_CHECK_S (leases are seconds long), so a
        loop may call it as often as it likes: on the delay node every look costs the one CPU
        that also forwards the packets."""
        now = time.monotonic()
        if now < self._next_check:
            return self._running
        self._next_check = now + LEASE_CHECK_S
        running = 0
        with self.state.locked():
            for path in [*self.state.shaped(), self.state.tcp]:
                state = self.state.read(path)
                lease_until = None if state is None else state.get("lease_until")
                if lease_until is None:
                    continue
                if time.time() >= lease_until:
                    try:
                        if path == self.state.tcp:
                            self._revert_tcp(state)
                        else:
                            self._revert(path.stem, state)
                    except (shaper.ShaperError, tcp.TcpError) as err:  # gone: nothing to hold
                        print(f"agent: {path.stem}: {err}", file=sys.stderr)
                        path.unlink(missing_ok=True)
                else:
                    running += 1
        self._running = running
        return running

    def watch(self) -> None:
        """Be the watchdog: hold the folder's leases until none is left (or another watchdog
        took over)."""
        while True:
            with self.state.locked():  # who started us writes our PID under this lock
                if self.state.watchdog_pid() != os.getpid():
                    return
            if not self.revert_expired():
                return
            time.sleep(WATCHDOG_POLL_S)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request; never raises (a failure is an answer with `ok` false)."""
        answer: dict[str, Any] = {"ok": True, "host": os.uname().nodename}
        try:
            asked = Request.model_validate(request)
        except ValidationError as err:
            return {**answer, "ok": False, "error": f"bad request: {err}", "error_kind": "input"}
        answer["verb"] = asked.verb
        try:
            ifname = asked.interface or shaper.interface_for_default_route()
            answer["interface"] = ifname
            if asked.verb in TCP_VERBS:
                answer.update(self._tcp_verb(ifname, asked))
            elif asked.verb == "apply":
                if asked.tree is None:
                    raise AgentError("apply needs a tree", "input", 2)
                answer.update(self.apply(ifname, asked.tree, asked.lease_s, asked.owner))
            elif asked.verb == "renew":
                answer.update(self.renew(ifname, asked.lease_s, asked.owner))
            elif asked.verb == "reset":
                answer.update(self.reset(ifname, asked.owner, asked.force))
            elif asked.verb == "show":
                answer.update(self.show(ifname, asked.owner))
            else:
                answer.update(getattr(self, asked.verb)(ifname))
        except AgentError as err:
            answer.update(ok=False, error=str(err), error_kind=err.kind)
        except shaper.NetemUnavailable as err:
            answer.update(ok=False, error=str(err), error_kind="netem_unavailable")
        except shaper.ShaperError as err:
            answer.update(ok=False, error=str(err), error_kind="shaper")
        except tcp.TcpError as err:
            answer.update(ok=False, error=str(err), error_kind="tcp")
        return answer

    def _tcp_verb(self, ifname: str, asked: Request) -> dict[str, Any]:
        if asked.verb == "tcp-apply":
            if asked.tcp is None:
                raise AgentError("tcp-apply needs tcp settings", "input", 2)
            return self.tcp_apply(ifname, asked.tcp, asked.lease_s, asked.owner)
        if asked.verb == "tcp-renew":
            return self.tcp_renew(asked.lease_s, asked.owner)
        if asked.verb == "tcp-reset":
            return self.tcp_reset(asked.owner, asked.force)
        return self.tcp_show(ifname, asked.owner)


# -- the one-shot face: `python -m netem.agent VERB [--interface IF] [--lease S] [--tree JSON]` --
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m netem.agent", description=__doc__)
    parser.add_argument("verb", choices=[*VERBS, "watchdog"])
    parser.add_argument("--interface", help="interface to shape (default: the default route's)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, help="seconds; 0 = none")
    parser.add_argument("--tree", help="apply: the tree as JSON (default: read from stdin)")
    parser.add_argument("--dry-run", action="store_true", help="print tc commands, touch nothing")
    return parser


def _request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"verb": args.verb, "interface": args.interface}
    if args.verb in ("apply", "renew"):
        request["lease_s"] = args.lease
    if args.verb == "apply":
        text = args.tree if args.tree is not None else sys.stdin.read()
        try:
            request["tree"] = json.loads(text)
        except json.JSONDecodeError as err:
            raise AgentError(f"the tree is not JSON: {err}", "input", 2) from None
    return request


def _dry_run(request: dict[str, Any]) -> dict[str, Any]:
    try:
        asked = Request.model_validate(request)
    except ValidationError as err:
        raise AgentError(f"bad request: {err}", "input", 2) from None
    ifname = asked.interface or shaper.interface_for_default_route()
    return {"ok": True, "dry_run": True, "interface": ifname,
            "commands": tc_commands(asked.tree, ifname)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one verb and print its JSON answer; exit 0 on success, 1 on failure, 2 on bad input."""
    args = _parser().parse_args(argv)
    if args.verb == "watchdog":
        Agent(args.state_dir).watch()
        return 0
    try:
        request = _request(args)
        if args.dry_run and args.verb == "apply":
            answer = _dry_run(request)
        else:
            answer = Agent(args.state_dir, watchdog=True).handle(request)
    except AgentError as err:
        answer = {"ok": False, "error": str(err), "error_kind": err.kind}
    print(json.dumps(answer))
    if answer["ok"]:
        return 0
    return 2 if answer["error_kind"] == "input" else 1


if __name__ == "__main__":
    sys.exit(main())
