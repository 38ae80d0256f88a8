"""How fleet-wide netem scales: apply + show + reset over 1 and over 16 local-fleet hosts.

Brings up its own local fleet (prefix wlb, 198.19.90.0/24), times the three verbs through
the SSH layer and the host agent (median of several rounds, warm connections, agent already
shipped), and tears the fleet down. The host kernel has no sch_netem, so the profile is
rate-only (1gbit): the same HTB/u32 tree and agent path as any other profile.

Goal: t(16) / t(1) <= 2.

    python bench/netem_fanout.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from inventory.loader import load_inventory
from inventory.localfleet import LocalFleet
from netem.fleet import FleetNetem
from netem.profile import parse_profile

SIZES = (1, 16)
PROFILE = "1gbit"


def _round(netem: FleetNetem) -> dict[str, float]:
    profile = parse_profile(PROFILE)
    times = {}
    for verb, call in (
        ("apply", lambda: netem.apply(profile, lease_s=120)),
        ("show", netem.show),
        ("reset", netem.reset),
    ):
        start = time.perf_counter()
        answers = call()
        times[verb] = time.perf_counter() - start
        bad = {name: a.get("error") for name, a in answers.items() if not a.get("ok")}
        if bad:
            raise RuntimeError(f"{verb} failed: {bad}")
    times["total"] = sum(times.values())
    return times


def measure(fleet, n_hosts: int, rounds: int) -> dict[str, float]:
    """Median seconds per verb over `rounds`, for the first `n_hosts` hosts."""
    sub = fleet.model_copy(update={"hosts": fleet.hosts[:n_hosts]})
    start = time.perf_counter()
    with FleetNetem(sub) as netem:
        ship_s = time.perf_counter() - start
        samples = [_round(netem) for _ in range(rounds)]
    out = {verb: statistics.median(s[verb] for s in samples) for verb in samples[0]}
    out["connect_and_ship"] = ship_s
    return {key: round(value, 3) for key, value in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args()
    local = LocalFleet(prefix="wlb", subnet="198.19.90.0/24")
    try:
        fleet = load_inventory(local.up(max(SIZES)))
        results = {n: measure(fleet, n, args.rounds) for n in SIZES}
    finally:
        local.down()
    ratio = results[16]["total"] / results[1]["total"]
    for n, figures in results.items():
        verbs = "  ".join(f"{verb} {seconds:.3f}s" for verb, seconds in figures.items())
        print(f"{n:>2} hosts: {verbs}")
    print(f"t(16)/t(1) = {ratio:.2f} (goal <= 2)")
    if args.json:
        summary = {
            "bench": "netem_fanout",
            "goal": "t(16)/t(1) <= 2 for apply+show+reset",
            "met": ratio <= 2,
            "ratio": round(ratio, 3),
            "profile": PROFILE,
            "seconds": {str(n): figures for n, figures in results.items()},
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
