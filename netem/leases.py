"""The agent's state folder: what wanlab changed on this machine, for whom, and until when.

One JSON file per shaped interface (`<ifname>.json`: what was there before, the owner,
`lease_until`) and one for the TCP settings (`host.tcp`), read and written under one lock; and
the PID of the watchdog process that holds the one-shot command's leases (`watchdog.pid`).
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netem.probe import spawn_detached

WATCHDOG_FILE = "watchdog.pid"
TCP_STATE = "host.tcp"  # the TCP settings' state (not *.json, which are interfaces')


class StateFolder:
    """The state files of one machine (or network namespace) in `path`."""

    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def locked(self):
        """Hold the folder's lock (every change of a state file happens under it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def interface(self, ifname: str) -> Path:
        """The state file of interface `ifname`."""
        return self.path / f"{ifname}.json"

    @property
    def tcp(self) -> Path:
        """The state file of the TCP settings."""
        return self.path / TCP_STATE

    def shaped(self) -> list[Path]:
        """The state files of every interface wanlab shapes here."""
        return list(self.path.glob("*.json"))

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        """A state file's state; None when there is none."""
        return json.loads(path.read_text()) if path.exists() else None

    @staticmethod
    def write(path: Path, state: dict[str, Any]) -> None:
        """Replace a state file whole (never half-written)."""
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(state))
        staging.replace(path)

    def load(self, ifname: str) -> dict[str, Any] | None:
        """Interface `ifname`'s state; None when wanlab does not shape it."""
        return self.read(self.interface(ifname))

    def save(self, ifname: str, state: dict[str, Any]) -> None:
        """Keep interface `ifname`'s state."""
        self.write(self.interface(ifname), state)

    def watchdog_pid(self) -> int | None:
        """The PID of the watchdog process holding this folder's leases, if it runs."""
        try:
            pid = int((self.path / WATCHDOG_FILE).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if b"netem.agent" in cmdline and b"watchdog" in cmdline else None

    def start_watchdog(self) -> None:
        """Start the process that holds this folder's leases (`python -m netem.agent
        watchdog`), unless one runs."""
        if self.watchdog_pid() is None:
            pid = spawn_detached(["netem.agent", "watchdog", "--state-dir", str(self.path)])
            (self.path / WATCHDOG_FILE).write_text(str(pid))


def held_by_another(state: dict | None, owner: str | None) -> str | None:
    """ "shaped by HOLDER (for N s more)" while a shaping another owner applied still holds;
    None otherwise (nothing applied, no owner on either side, or the lease is over)."""
    if state is None or "lease_until" not in state:  # saved before applying: not held
        return None
    holder, until = state.get("owner"), state.get("lease_until")
    if holder is None or owner is None or holder == owner:
        return None
    if until is not None and until <= time.time():
        return None
    how_long = "until reset" if until is None else f"for {until - time.time():.0f} s more"
    return f"shaped by {holder} ({how_long})"


def refusal(what: str, state: dict | None, owner: str | None, force: bool) -> str | None:
    """Why `owner` may not touch `what` (an interface, or the TCP settings): another owner's
    shaping holds it; None where it may (or `force`)."""
    held = None if force else held_by_another(state, owner)
    if held is None:
        return None
    return (
        f"{what} is {held}; another controller is using this host. Wait for it, or put the "
        "host back by hand with `wanlab netem reset`"
    )
