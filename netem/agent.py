"""The host-side agent: `python -m netem.agent apply|show|reset|renew|status`, JSON in and out.

It keeps, per interface, what was there before wanlab touched it and the lease of the current
shaping in a state directory. `apply` starts a detached watchdog that restores the interface
when the lease runs out unless `renew` extends it, so a controller that dies never leaves a
host shaped. Every command prints one JSON object; exit code 0 on success, 1 on failure,
2 on bad input.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from netem import shaper
from netem.probe import spawn_detached
from netem.tree import Tree, tc_commands

DEFAULT_STATE_DIR = Path("/run/wanlab/netem")
DEFAULT_LEASE_S = 300.0
WATCHDOG_POLL_S = 0.25


class AgentError(Exception):
    """A failure to report as JSON; `code` is the exit status."""

    def __init__(self, message: str, kind: str, code: int = 1):
        super().__init__(message)
        self.kind = kind
        self.code = code


@contextmanager
def _locked(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _state_path(state_dir: Path, ifname: str) -> Path:
    return state_dir / f"{ifname}.json"


def _load(state_dir: Path, ifname: str) -> dict[str, Any] | None:
    path = _state_path(state_dir, ifname)
    return json.loads(path.read_text()) if path.exists() else None


def _save(state_dir: Path, ifname: str, state: dict[str, Any]) -> None:
    path = _state_path(state_dir, ifname)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _is_watchdog(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"netem.agent" in cmdline and b"watchdog" in cmdline


def _stop_watchdog(state: dict[str, Any]) -> None:
    pid = state.get("watchdog_pid")
    if pid != os.getpid() and _is_watchdog(pid):
        os.kill(pid, signal.SIGTERM)


def _start_watchdog(ifname: str, state_dir: Path) -> int:
    return spawn_detached(["netem.agent", "watchdog", "--interface", ifname,
                           "--state-dir", str(state_dir)])  # fmt: skip


def _revert(state_dir: Path, ifname: str, state: dict[str, Any]) -> None:
    shaper.restore(state["snapshot"])
    _state_path(state_dir, ifname).unlink(missing_ok=True)


def _read_tree_arg(raw: str | None) -> Tree:
    text = raw if raw is not None else sys.stdin.read()
    try:
        return Tree.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as err:
        raise AgentError(f"the tree given is not valid: {err}", "input", 2) from None


def cmd_apply(args: argparse.Namespace, ifname: str) -> dict[str, Any]:
    """Shape `ifname` with the tree given, read it back, take the lease."""
    tree = _read_tree_arg(args.tree)
    if args.dry_run:
        return {"dry_run": True, "commands": tc_commands(tree, ifname)}
    with _locked(args.state_dir):
        state = _load(args.state_dir, ifname)
        fresh = state is None
        if fresh:
            state = {"snapshot": shaper.snapshot(ifname), "watchdog_pid": None}
            _save(args.state_dir, ifname, state)
        try:
            result = shaper.apply(ifname, tree)
        except shaper.ShaperError as err:
            if fresh or not isinstance(err, shaper.NetemUnavailable):
                _stop_watchdog(state)
                _revert(args.state_dir, ifname, state)
            raise
        actual = shaper.read_tree(ifname)
        state["tree"] = tree.model_dump()
        state["lease_until"] = time.time() + args.lease if args.lease > 0 else None
        if args.lease > 0 and not _is_watchdog(state.get("watchdog_pid")):
            state["watchdog_pid"] = _start_watchdog(ifname, args.state_dir)
        _save(args.state_dir, ifname, state)
    return {
        "result": result,
        "matches": actual == shaper.normalized(tree),
        "shaping": None if actual is None else actual.describe(),
        "lease_until": state["lease_until"],
    }


def cmd_show(args: argparse.Namespace, ifname: str) -> dict[str, Any]:
    """What the kernel holds on `ifname`, its counters, and the lease."""
    tree = shaper.read_tree(ifname)
    state = _load(args.state_dir, ifname)
    asked = None if state is None or "tree" not in state else Tree.model_validate(state["tree"])
    return {
        "shaped": tree is not None,
        "tree": None if tree is None else tree.model_dump(),
        "shaping": None if tree is None else tree.describe(),
        "matches_applied": None if asked is None else tree == shaper.normalized(asked),
        "stats": shaper.read_stats(ifname),
        "lease_until": None if state is None else state.get("lease_until"),
    }


def cmd_reset(args: argparse.Namespace, ifname: str) -> dict[str, Any]:
    """Restore what was on `ifname` before wanlab; a no-op when nothing is applied."""
    with _locked(args.state_dir):
        state = _load(args.state_dir, ifname)
        if state is None:
            return {"result": "clean"}
        _stop_watchdog(state)
        _revert(args.state_dir, ifname, state)
    return {"result": "restored"}


def cmd_renew(args: argparse.Namespace, ifname: str) -> dict[str, Any]:
    """Extend the lease by `--lease` seconds from now."""
    with _locked(args.state_dir):
        state = _load(args.state_dir, ifname)
        if state is None or "tree" not in state:
            raise AgentError(f"nothing is applied on {ifname}: no lease to renew", "no_lease")
        state["lease_until"] = time.time() + args.lease
        if not _is_watchdog(state.get("watchdog_pid")):
            state["watchdog_pid"] = _start_watchdog(ifname, args.state_dir)
        _save(args.state_dir, ifname, state)
    return {"lease_until": state["lease_until"]}


def cmd_status(args: argparse.Namespace, ifname: str) -> dict[str, Any]:
    """The lease and watchdog of `ifname`."""
    state = _load(args.state_dir, ifname) or {}
    return {
        "applied": "tree" in state,
        "lease_until": state.get("lease_until"),
        "watchdog_pid": state.get("watchdog_pid"),
        "watchdog_alive": _is_watchdog(state.get("watchdog_pid")),
    }


def run_watchdog(ifname: str, state_dir: Path) -> None:
    """Sleep until the lease runs out, then restore the interface; exits once it is reset."""
    while True:
        with _locked(state_dir):
            state = _load(state_dir, ifname)
            if state is None or state.get("watchdog_pid") != os.getpid():
                return
            lease_until = state.get("lease_until")
            if lease_until is not None and time.time() >= lease_until:
                _revert(state_dir, ifname, state)
                return
        time.sleep(WATCHDOG_POLL_S)


COMMANDS = {
    "apply": cmd_apply,
    "show": cmd_show,
    "reset": cmd_reset,
    "renew": cmd_renew,
    "status": cmd_status,
}


@functools.cache
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m netem.agent", description=__doc__)
    parser.add_argument("command", choices=[*COMMANDS, "watchdog"])
    parser.add_argument("--interface", help="interface to shape (default: the default route's)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, help="seconds; 0 = none")
    parser.add_argument("--tree", help="the tree as JSON (default: read from stdin)")
    parser.add_argument("--dry-run", action="store_true", help="print tc commands, touch nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one agent command and print its JSON answer."""
    args = _parser().parse_args(argv)
    if args.command == "watchdog":
        run_watchdog(args.interface, args.state_dir)
        return 0
    answer: dict[str, Any] = {"ok": True, "host": os.uname().nodename, "command": args.command}
    try:
        ifname = args.interface or shaper.interface_for_default_route()
        answer["interface"] = ifname
        answer.update(COMMANDS[args.command](args, ifname))
        code = 0
    except AgentError as err:
        answer.update(ok=False, error=str(err), error_kind=err.kind)
        code = err.code
    except shaper.NetemUnavailable as err:
        answer.update(ok=False, error=str(err), error_kind="netem_unavailable")
        code = 1
    except shaper.ShaperError as err:
        answer.update(ok=False, error=str(err), error_kind="shaper")
        code = 1
    print(json.dumps(answer))
    return code


if __name__ == "__main__":
    sys.exit(main())
