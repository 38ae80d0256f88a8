"""Our GPipe against `torch.distributed.pipelining`'s, per network profile, on the local fleet.

One host per pipeline stage (network namespaces on a bridge, sshd in each), a rate-only profile
on every host's egress, the same model, partition, micro-batches, data and optimizer for every
engine. Each repeat runs the engines back to back, in alternating order, and the ratio of ours
to theirs is taken within the repeat; the figure per profile is the median over repeats. A run's
figure is its best timed iteration, since other work on this (shared, 2-core) machine slows
some iterations and not others; the ratio of the runs' median iterations is printed beside it.
Goal: ours / pipelining-gpipe ≤ 0.95 on every profile. Schedule1F1B is measured for information.
"""

from __future__ import annotations

import argparse
import json
import statistics

from fleetbench import FleetBench

OURS, THEIRS = "gpipe", "pipelining-gpipe"
GOAL_RATIO = 0.95


def run_flags(args: argparse.Namespace, engine: str) -> list[str]:
    """The trainer flags of one run."""
    return [
        "--model", args.model, "--pipeline", str(args.stages), "--batch", str(args.batch),
        "--micro-batch", str(args.micro_batch), "--iterations", str(args.iterations),
        "--warmup", str(args.warmup), "--threads", "1", "--engine", engine,
    ]  # fmt: skip


def measure_profile(bench: FleetBench, profile: str, args: argparse.Namespace) -> dict:
    """Every engine `args.repeats` times under `profile`; medians and the paired ratios."""
    bench.shape(profile)
    best: dict[str, list[float]] = {engine: [] for engine in args.engines}
    median: dict[str, list[float]] = {engine: [] for engine in args.engines}
    for repeat in range(args.repeats):
        order = args.engines if repeat % 2 == 0 else args.engines[::-1]
        for engine in order:
            total = bench.train(run_flags(args, engine), timeout=args.timeout)["phases"]["total_s"]
            best[engine].append(total["min"])
            median[engine].append(total["median"])
            print(
                f"  {profile} repeat {repeat} {engine}: best {total['min']:.4f} s, "
                f"median {total['median']:.4f} s",
                flush=True,
            )

    def paired(times: dict[str, list[float]]) -> list[float]:
        return [o / t for o, t in zip(times[OURS], times[THEIRS], strict=True)]

    return {
        "profile": profile,
        "iteration_s": {engine: statistics.median(values) for engine, values in best.items()},
        "median_iteration_s": {e: statistics.median(values) for e, values in median.items()},
        "runs_best_s": best,
        "runs_median_s": median,
        "ratio": statistics.median(paired(best)),
        "ratios": paired(best),
        "ratio_of_medians": statistics.median(paired(median)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", nargs="+", default=["default", "1gbit", "200mbit", "50mbit"])
    parser.add_argument("--engines", nargs="+", default=[OURS, THEIRS, "pipelining-1f1b"])
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print the goal JSON last")
    args = parser.parse_args()
    if OURS not in args.engines or THEIRS not in args.engines:
        parser.error(f"--engines must include {OURS} and {THEIRS}")

    with FleetBench(args.stages) as bench:
        rows = [measure_profile(bench, profile, args) for profile in args.profiles]
        failures = bench.failures
    print(
        f"model {args.model}, {args.stages} stages on {args.stages} hosts, batch {args.batch}, "
        f"micro-batch {args.micro_batch}, {args.iterations} iterations ({args.warmup} warm-up), "
        f"rank 0's best iteration per run, median over {args.repeats} repeats"
    )
    header = " ".join(f"{e:>17}" for e in args.engines)
    print(f"{'profile':>10} {header} {'ratio':>7} {'of medians':>10}")
    for row in rows:
        cells = " ".join(f"{row['iteration_s'][e]:>15.4f} s" for e in args.engines)
        print(f"{row['profile']:>10} {cells} {row['ratio']:>7.3f} {row['ratio_of_medians']:>10.3f}")
    if args.json:
        report = {
            "bench": "engines",
            "goal": f"best iteration {OURS} / {THEIRS} ≤ {GOAL_RATIO} on every profile",
            "met": all(row["ratio"] <= GOAL_RATIO for row in rows),
            "model": args.model,
            "stages": args.stages,
            "batch": args.batch,
            "micro_batch": args.micro_batch,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "profiles": rows,
            "failed_runs_retried": failures,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
