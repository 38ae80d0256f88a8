"""A process's whole tree, read from /proc, and how to end every process in it.

Launchers put their workers in sessions and process groups of their own (torchrun starts each
worker in a new session; ninja each compiler in its own group), so neither a session nor a group
holds a job's processes. A process that became a child subreaper (`become_subreaper`) inherits
every orphan of its tree instead of init, so its descendants by parent links are the whole tree
even after a launcher in the middle dies; a marker in the environment finds any process that
left the tree all the same. Linux only, standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children (not init's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: the fields follow its last ")"
    return int(text[text.rindex(b")") + 2 :].split()[1])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` by parent links (zombies included)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def marked(marker: str) -> list[int]:
    """Every process whose environment holds `WANLAB_JOB=marker` (other than this one)."""
    wanted = f"WANLAB_JOB={marker}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def reap(keep: set[int]) -> None:
    """Collect the exit of every finished child not in `keep` (those are waited for elsewhere)."""
    root = os.getpid()
    for pid in _pids():
        if pid not in keep and _parent(pid) == root:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_tree(marker: str | None, keep: set[int] = frozenset(), rounds: int = 50) -> int:
    """SIGKILL every descendant of this process and every process marked with `marker`: freeze
    them first (a stopped process forks no more), look again for ones forked meanwhile, then
    kill, until a scan finds none. Returns how many processes were killed."""
    killed: set[int] = set()
    root = os.getpid()
    for _ in range(rounds):
        found = descendants(root) + (marked(marker) if marker else [])
        alive = [pid for pid in found if _alive(pid)]
        if not alive:
            break
        _signal_all(alive, signal.SIGSTOP)
        more = [pid for pid in descendants(root) if pid not in alive and _alive(pid)]
        _signal_all(alive + more, signal.SIGKILL)
        killed.update(alive + more)
        time.sleep(0.02)
        reap(keep)
    return len(killed)


def _alive(pid: int) -> bool:
    """Running or stopped (not a zombie, not gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return False
    return text[text.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")
