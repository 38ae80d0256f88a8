"""The parameter server's sync time against its bandwidth bound, on the local fleet.

D replicas of a one-stage pipeline (P = 1) on D hosts, a rate-only profile of β on every host's
egress, and a model whose gradient of N bytes makes the transfer dominate: the sync phase
(`ps_sync_s`, rank 0 = the server) is compared with 2·(D−1)·N/β, the time the server's link
needs to take in D−1 gradients and send D−1 averages back. Goal: measured / bound ≤ 1.2 for
every D. Since each host's egress is shaped and the bridge's is not, the D−1 pushes can arrive
side by side, so for D ≥ 3 the sync can beat that bound; the printed `own_egress_s`,
N/β + (D−1)·N/β, is what this fleet's shaping allows at best.
"""

from __future__ import annotations

import argparse
import json
import statistics

from fleetbench import FleetBench

from netem.profile import parse_profile  # noqa: E402
from trainer.model import CONFIGS  # noqa: E402

GOAL_RATIO = 1.2
BYTES_PER_PARAM = 4  # fp32 gradients


def run_flags(args: argparse.Namespace, replicas: int) -> list[str]:
    """The trainer flags of one run: one stage, `replicas` pipelines, parameter server."""
    return [
        "--model", args.model, "--pipeline", "1", "--dp-degree", str(replicas), "--dp-mode", "ps",
        "--batch", "1", "--micro-batch", "1", "--seq-len", str(args.seq_len),
        "--iterations", str(args.iterations), "--warmup", "1", "--threads", "1",
    ]  # fmt: skip


def measure(bench: FleetBench, replicas: int, args: argparse.Namespace, rate_bps: int) -> dict:
    """Sync time for `replicas` pipelines, median over repeats, and its bounds."""
    n_bytes = CONFIGS[args.model].n_params() * BYTES_PER_PARAM
    beta = rate_bps / 8  # bytes per second
    bound = 2 * (replicas - 1) * n_bytes / beta
    syncs, totals = [], []
    for repeat in range(args.repeats):
        summary = bench.train(run_flags(args, replicas), args.timeout, n_ranks=replicas)
        syncs.append(summary["phases"]["ps_sync_s"]["median"])
        totals.append(summary["phases"]["total_s"]["median"])
        print(f"  D={replicas} repeat {repeat}: ps_sync {syncs[-1]:.3f} s", flush=True)
    sync = statistics.median(syncs)
    return {
        "dp_degree": replicas,
        "gradient_bytes": n_bytes,
        "ps_sync_s": sync,
        "runs_ps_sync_s": syncs,
        "iteration_s": statistics.median(totals),
        "bound_s": bound,
        "ratio": sync / bound,
        "own_egress_s": replicas * n_bytes / beta,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="100mbit", help="a rate-only profile")
    parser.add_argument("--dp-degree", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print the goal JSON last")
    args = parser.parse_args()
    profile = parse_profile(args.profile, source="--profile")
    if profile.rate_bps is None or profile.delay_ms:
        parser.error("--profile must set a rate and no delay (this kernel has no netem)")

    with FleetBench(max(args.dp_degree)) as bench:
        bench.shape(args.profile)
        rows = [measure(bench, d, args, profile.rate_bps) for d in args.dp_degree]
        failures = bench.failures
    n_bytes = rows[0]["gradient_bytes"]
    print(
        f"model {args.model}: N = {n_bytes} bytes of fp32 gradients, β = {args.profile} "
        f"({profile.rate_bps / 8:.0f} bytes/s) on every host's egress, P = 1, "
        f"median over {args.repeats} repeats of rank 0's median sync"
    )
    print(f"{'D':>3} {'ps_sync s':>10} {'bound s':>9} {'ratio':>6} {'own egress s':>13}")
    for r in rows:
        print(
            f"{r['dp_degree']:>3} {r['ps_sync_s']:>10.3f} {r['bound_s']:>9.3f} {r['ratio']:>6.3f} "
            f"{r['own_egress_s']:>13.3f}"
        )
    if args.json:
        report = {
            "bench": "ps",
            "goal": f"ps_sync_s / (2·(D−1)·N/β) ≤ {GOAL_RATIO} under {args.profile}",
            "met": all(r["ratio"] <= GOAL_RATIO for r in rows),
            "model": args.model,
            "gradient_bytes": n_bytes,
            "beta_bytes_per_s": profile.rate_bps / 8,
            "profile": args.profile,
            "runs": rows,
            "failed_runs_retried": failures,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
