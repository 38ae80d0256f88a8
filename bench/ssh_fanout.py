"""Time one parallel SSH command over 1, 4 and 16 local hosts; goal t(16)/t(1) <= 2.

Brings up its own local fleet (prefix `wlb`, 198.18.4.0/24, a temporary state folder), measures
the first command (connect + run, "cold") and the median of repeated commands on open connections
("warm"), then removes the fleet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from experiments.lab.fleet import LocalFleet
from inventory.loader import load_inventory
from inventory.ssh import FleetSSH

GOAL_RATIO = 2.0


def time_fanout(inventory: Path, n_hosts: int, repeats: int) -> dict:
    """Cold and warm wall time of `hostname` on the first `n_hosts` hosts."""
    fleet = load_inventory(inventory)
    fleet = fleet.model_copy(update={"hosts": fleet.hosts[:n_hosts]})
    with FleetSSH(fleet) as ssh:
        started = time.perf_counter()
        results = ssh.run(["hostname"])
        cold = time.perf_counter() - started
        assert all(r.ok for r in results.values()), results
        warm = []
        for _ in range(repeats):
            started = time.perf_counter()
            results = ssh.run(["hostname"])
            warm.append(time.perf_counter() - started)
            assert all(r.ok for r in results.values()), results
    return {
        "hosts": n_hosts,
        "cold_s": round(cold, 4),
        "warm_median_s": round(statistics.median(warm), 4),
        "warm_max_s": round(max(warm), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        fleet = LocalFleet(prefix="wlb", subnet="198.18.4.0/24", home=Path(home))
        try:
            inventory = fleet.up(16)
            rows = [time_fanout(inventory, n, args.repeats) for n in (1, 4, 16)]
        finally:
            fleet.down()
    for row in rows:
        cold, warm, worst = (row[k] * 1000 for k in ("cold_s", "warm_median_s", "warm_max_s"))
        print(
            f"{row['hosts']:>3} hosts: cold {cold:7.1f} ms, "
            f"warm median {warm:6.1f} ms (max {worst:.1f})"
        )
    ratio = rows[-1]["warm_median_s"] / rows[0]["warm_median_s"]
    cold_ratio = rows[-1]["cold_s"] / rows[0]["cold_s"]
    print(f"t(16)/t(1): warm {ratio:.2f}, cold {cold_ratio:.2f} (goal <= {GOAL_RATIO})")
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "ssh_fanout",
                    "goal": f"warm t(16)/t(1) <= {GOAL_RATIO}",
                    "met": ratio <= GOAL_RATIO,
                    "ratio_warm": round(ratio, 3),
                    "ratio_cold": round(cold_ratio, 3),
                    "rows": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
