"""How faithfully the lab reproduces the configured network, through the path the demo uses.

Brings up a 3-host local lab of its own (prefix `wlq`, 198.18.15.0/24; on a kernel without
sch_netem the hosts' links run through the delay node), applies every built-in profile and one
pair matrix with the product's own `FleetNetem`, and measures with the product's own probe
between two shaped hosts: RTT (the median of 200 TCP round trips) against 2 x the one-way delay,
goodput against the rate, and the netem drops the kernel counts. Rates are scaled by 1/--scale (the
node forwards a few hundred Mbit/s); delays are not. It also reports the unshaped RTT and the
forwarding ceiling: one unshaped flow, and every host sending at once.

What "1 ms one-way" means: two hosts shaped with it see a round trip of 2 ms, as on a fleet
whose own network adds ~0.1 ms. The node takes its own measured forwarding latency out of every
delay it applies (`experiments.lab.measure_forwarding`), and is judged against 2 x delay.

Goals: RTT within max(5 %, 0.2 ms) of 2 x delay, goodput 90-102 % of the rate, zero drops.

    python bench/fidelity.py [--scale 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments import lab
from experiments.lab import kernel
from experiments.lab.fleet import LocalFleet
from experiments.lab.node import DelayNode
from inventory.loader import load_inventory
from netem.fleet import FleetNetem
from netem.pairs import pair_matrix_from_data
from netem.profile import BUILTIN

PROBE_PORT = 5411
PINGS = 200  # the node's latency wanders from moment to moment: a median of 40 varies by 0.4 ms
PROFILES = ("d1b5", "d5b2", "d10b1", "d50b1")
MATRIX_LINKS = [  # (src, dst, one-way delay ms, rate at full scale)
    ("h0", "h1", 5, 2_000_000_000),
    ("h0", "h2", 30, 1_000_000_000),
]


def _row(setting: str, delay_ms: float, rate_bps: int, measured: dict, drops: int) -> dict:
    configured = 2 * delay_ms
    rtt = measured["rtt_ms_median"]
    ratio = measured["throughput_bps"] / rate_bps
    return {
        "setting": setting,
        "configured_rtt_ms": configured,
        "measured_rtt_ms": round(rtt, 3),
        "rtt_ok": abs(rtt - configured) <= max(0.05 * configured, 0.2),
        "rate_bps": rate_bps,
        "measured_bps": round(measured["throughput_bps"]),
        "rate_ratio": round(ratio, 3),
        "rate_ok": 0.90 <= ratio <= 1.02,
        "netem_drops": drops,
        "drops_ok": drops == 0,
    }


def _drops(shown: dict) -> int:
    total = 0
    for answer in shown.values():
        for where, counters in (answer.get("stats") or {}).items():
            if counters["kind"] == "netem" or where == "root":
                total += counters["drops"]
    return total


def _seconds(delay_ms: float) -> float:
    return max(3.0, 40 * 2 * delay_ms / 1000)  # the bulk window spans >= 40 round trips


def measure(netem: FleetNetem, scale: int) -> tuple[list[dict], dict]:
    """Every built-in profile and the matrix; then the unshaped RTT and forwarding ceiling."""
    rows = []
    for name in PROFILES:
        profile = BUILTIN[name]
        scaled = profile.model_copy(update={"rate_bps": profile.rate_bps // scale})
        netem.apply(scaled, lease_s=300)
        measured = netem.probe(
            pairs=[("h0", "h1")], seconds=_seconds(profile.delay_ms), count=PINGS
        )[0]
        rows.append(_row(name, profile.delay_ms, scaled.rate_bps, measured, _drops(netem.show())))
        netem.reset()
    links = [
        {"src": s, "dst": d, "delay": f"{ms}ms", "rate": f"{rate // scale // 1_000_000}mbit"}
        for s, d, ms, rate in MATRIX_LINKS
    ]
    netem.apply(
        pair_matrix_from_data({"by": "host", "link": links}, "fidelity-matrix"), lease_s=300
    )
    for src, dst, delay_ms, rate in MATRIX_LINKS:
        measured = netem.probe(pairs=[(src, dst)], seconds=_seconds(delay_ms), count=PINGS)[0]
        row = _row(f"matrix {src}->{dst}", delay_ms, rate // scale, measured, 0)
        rows.append(row)
    drops = _drops(netem.show())
    for row in rows[-len(MATRIX_LINKS) :]:
        row.update(netem_drops=drops, drops_ok=drops == 0)
    netem.reset()
    one_flow = netem.probe(pairs=[("h0", "h1")], seconds=3.0)[0]
    ring = [("h0", "h1"), ("h1", "h2"), ("h2", "h0")]
    with ThreadPoolExecutor(len(ring)) as pool:  # every host sending at once
        futures = [
            pool.submit(netem.probe, pairs=[pair], seconds=3.0, port=PROBE_PORT + i)
            for i, pair in enumerate(ring)
        ]
        concurrent = [future.result()[0] for future in futures]
    ceiling = {
        "unshaped_rtt_ms": round(one_flow["rtt_ms_median"], 3),
        "one_flow_bps": round(one_flow["throughput_bps"]),
        "all_hosts_sending_bps": round(sum(c.get("throughput_bps", 0) for c in concurrent)),
        "all_hosts_probe_errors": [
            c.get("error", "no throughput") for c in concurrent if "throughput_bps" not in c
        ],
    }
    return rows, ceiling


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="rates are divided by this")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args()
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    with tempfile.TemporaryDirectory(prefix="wanlab-fidelity-") as home:
        fleet = LocalFleet(prefix="wlq", subnet="198.18.15.0/24", home=Path(home))
        try:
            inventory = load_inventory(lab.up(3, "auto", fleet))
            node = DelayNode(fleet.node_directory)
            forwarding = {
                "one_way_ms": node.mailbox.forwarding().points,
                "release": node.release(),
            }
            with FleetNetem(inventory) as netem:
                rows, ceiling = measure(netem, args.scale)
        finally:
            lab.down(fleet)
    print(
        f"{'setting':16} {'cfg RTT':>8} {'meas RTT':>9} {'rate':>9} {'goodput':>9} "
        f"{'ratio':>6} {'drops':>6}"
    )
    for row in rows:
        print(
            f"{row['setting']:16} {row['configured_rtt_ms']:>8.3f} {row['measured_rtt_ms']:>9.3f}"
            f" {row['rate_bps'] / 1e6:>8.1f}M {row['measured_bps'] / 1e6:>8.1f}M"
            f" {row['rate_ratio']:>6.3f} {row['netem_drops']:>6}"
        )
    print(
        f"unshaped RTT {ceiling['unshaped_rtt_ms']} ms; forwarding ceiling: one flow "
        f"{ceiling['one_flow_bps'] / 1e6:.0f} Mbit/s, 3 hosts sending at once "
        f"{ceiling['all_hosts_sending_bps'] / 1e6:.0f} Mbit/s in all"
    )
    taken_out = ", ".join(f"{ms} ms at {d:g} ms" for d, ms in forwarding["one_way_ms"])
    print(f"node forwarding latency taken out of each delay: {taken_out or 'none'}")
    met = all(row["rtt_ok"] and row["drops_ok"] and row["rate_ok"] for row in rows)
    shaping = lab.resolve_shaping("auto")
    ran_on = {
        "host_kernel": platform.release(),
        "cpu": kernel.cpu_facts(),
        "shaping": shaping,
        "rate_scale": f"1/{args.scale}",
    }
    if shaping == "delay-node":
        ran_on["node_kernel"] = kernel.describe()["kernel"]
        ran_on["node_release"] = forwarding["release"]  # as the running node said
    if args.json:
        summary = {
            "bench": "netem_fidelity",
            "goal": "RTT within max(5%, 0.2 ms) of 2 x one-way delay; goodput 90-102% of the "
            "rate; zero netem drops",
            "met": met,
            "ran_on": ran_on,
            "forwarding": forwarding,
            "ceiling": ceiling,
            "rows": rows,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
