"""How fleet-wide netem scales: apply + show + reset over 1 and over 16 local-fleet hosts.

Brings up its own local fleet (prefix wlb, 198.19.90.0/24), times the three verbs through
the SSH layer and the host agent (median of several rounds, warm connections, agent already
shipped), and tears the fleet down. The host kernel has no sch_netem, so the profile is
rate-only (1gbit): the same HTB/u32 tree and agent path as any other profile.

Both ways of running the agent are timed: one-shot (a fresh `python -m netem.agent` per command
and host, as a user runs it on a host by hand) and persistent (one agent per host for the
session, as every `wanlab` verb does). Goal: t(16) / t(1) <= 2 on the persistent path.

It also says where the CPU went in each round: the whole machine's busy time (from /proc/stat),
the controller's own (this process, all threads) and, on the persistent path, the agents'
(/proc/PID/stat of each agent). Every local host shares this machine's cores, so when the busy
time divided by the core count comes close to the wall time, the round was bound by CPU, not
by anything waiting in turn.

    python bench/netem_fanout.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from experiments.lab.fleet import LocalFleet
from inventory.loader import load_inventory
from netem.fleet import FleetNetem
from netem.profile import parse_profile
from netem.tree import tree_for_profile

SIZES = (1, 16)
MODES = ("one-shot", "persistent")
PROFILE = "1gbit"


def _one_shot(netem: FleetNetem, verb: str, *args: str) -> dict[str, dict]:
    """`python -m netem.agent VERB …` afresh on every host over SSH, as a user would run it."""

    def argv(host) -> list[str]:
        env = ["env", f"PYTHONPATH={netem.agents.code[host.name]}"]
        where = ["--interface", host.interface] if host.interface else []
        return [*env, host.python, "-m", "netem.agent", verb, *where, *args]

    results = netem.ssh.run(argv, timeout=netem.timeout_s)
    return {
        name: json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else
        {"ok": False, "error": r.error or r.stderr[-300:]}
        for name, r in results.items()
    }  # fmt: skip


def _round(netem: FleetNetem, one_shot: bool) -> dict[str, float]:
    profile = parse_profile(PROFILE)
    if one_shot:
        tree = tree_for_profile(profile).model_dump_json()
        verbs = (
            ("apply", lambda: _one_shot(netem, "apply", "--lease", "120", "--tree", tree)),
            ("show", lambda: _one_shot(netem, "show")),
            ("reset", lambda: _one_shot(netem, "reset")),
        )
    else:
        verbs = (
            ("apply", lambda: netem.apply(profile, lease_s=120)),
            ("show", netem.show),
            ("reset", netem.reset),
        )
    times = {}
    for verb, call in verbs:
        start = time.perf_counter()
        answers = call()
        times[verb] = time.perf_counter() - start
        bad = {name: a.get("error") for name, a in answers.items() if not a.get("ok")}
        if bad:
            raise RuntimeError(f"{verb} failed: {bad}")
    times["total"] = sum(times.values())
    return times


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds this machine has spent busy (all cores, idle and I/O wait excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) * TICK_S


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes."""
    total = 0
    for pid in pids:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(after_name[11]) + int(after_name[12])  # utime, stime
    return total * TICK_S


def measure(fleet, n_hosts: int, rounds: int, persistent: bool) -> dict[str, float]:
    """Median seconds per verb over `rounds`, for the first `n_hosts` hosts, and the mean CPU
    seconds per round: the machine's, the controller's and (persistent) the agents'."""
    sub = fleet.model_copy(update={"hosts": fleet.hosts[:n_hosts]})
    start = time.perf_counter()
    with FleetNetem(sub) as netem:
        ship_s = time.perf_counter() - start
        agents = list(netem.agents.pids.values()) if persistent else []
        busy, own, agents_cpu = machine_busy_s(), time.process_time(), process_cpu_s(agents)
        samples = [_round(netem, not persistent) for _ in range(rounds)]
        cpu = {
            "cpu_machine": (machine_busy_s() - busy) / rounds,
            "cpu_controller": (time.process_time() - own) / rounds,
            "cpu_agents": (process_cpu_s(agents) - agents_cpu) / rounds if agents else None,
        }
    out = {verb: statistics.median(s[verb] for s in samples) for verb in samples[0]}
    out["mean_total"] = statistics.fmean(s["total"] for s in samples)
    out["connect_and_ship"] = ship_s
    out.update(cpu)
    return {key: None if value is None else round(value, 3) for key, value in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args()
    local = LocalFleet(prefix="wlb", subnet="198.19.90.0/24")
    try:
        fleet = load_inventory(local.up(max(SIZES)))
        results = {
            mode: {n: measure(fleet, n, args.rounds, mode == "persistent") for n in SIZES}
            for mode in MODES
        }
    finally:
        local.down()
    ratios = {mode: r[16]["total"] / r[1]["total"] for mode, r in results.items()}
    cores = os.cpu_count()
    for mode, by_size in results.items():
        for n, f in by_size.items():
            verbs = "  ".join(f"{verb} {f[verb]:.3f}s" for verb in ("apply", "show", "reset"))
            print(f"{mode:>10} {n:>2} hosts: {verbs}  total {f['total']:.3f}s")
            agents = "" if f["cpu_agents"] is None else f", agents {f['cpu_agents']:.3f}"
            print(
                f"{'':>10} CPU-s per round: machine {f['cpu_machine']:.3f} (/ {cores} cores = "
                f"{f['cpu_machine'] / cores:.3f} s vs {f['mean_total']:.3f} s wall), "
                f"controller {f['cpu_controller']:.3f}{agents}"
            )
        print(f"{mode:>10} t(16)/t(1) = {ratios[mode]:.2f} (goal <= 2)")
    if args.json:
        summary = {
            "bench": "netem_fanout",
            "goal": "t(16)/t(1) <= 2 for apply+show+reset with the persistent agents "
            "(the path experiment runs use)",
            "met": ratios["persistent"] <= 2,
            "ratio": round(ratios["persistent"], 3),
            "ratio_one_shot": round(ratios["one-shot"], 3),
            "profile": PROFILE,
            "cores": cores,
            "busy_share_16": round(
                results["persistent"][16]["cpu_machine"]
                / cores
                / results["persistent"][16]["mean_total"],
                3,
            ),
            "seconds": {mode: {str(n): f for n, f in r.items()} for mode, r in results.items()},
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
