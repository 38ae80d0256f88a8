"""Every engine and layout against our GPipe, per network profile, on the local fleet.

One rank per host (network namespaces on a bridge, sshd in each), a rate-only profile on every
host's egress, the same model, global batch, micro-batch, data and optimizer for every variant,
on the same two hosts:
- `gpipe`: our GPipe over the two hosts (tp1-pp2);
- `pipelining-gpipe`, `pipelining-1f1b`: `torch.distributed.pipelining`'s schedules, tp1-pp2;
- `tensor`: one stage split over both hosts (tp2-pp1, our engine, two all-reduces per block
  each way);
- `fsdp`: the whole model fully sharded over two replicas (tp1-pp1-dp2, half the batch each);
- `allreduce`: the same two replicas, each holding the whole model, averaging by all-reduce.
Each repeat runs the variants back to back, in alternating order, and each one's ratio to ours
is taken within the repeat; the figure per profile is the median over repeats. A run's figure
is its best timed iteration, since other work on this (shared, 2-core) machine slows some
iterations and not others; the ratio of the runs' median iterations is printed beside it.
Goal: ours / pipelining-gpipe ≤ 0.95 on every profile; the other variants are for information.
"""

from __future__ import annotations

import argparse
import json
import statistics

from fleetbench import FleetBench
from machine import machine_facts

OURS, THEIRS = "gpipe", "pipelining-gpipe"
GOAL_RATIO = 0.95
HOSTS = 2
VARIANTS = {
    OURS: {"engine": OURS, "pipeline": HOSTS},
    THEIRS: {"engine": THEIRS, "pipeline": HOSTS},
    "pipelining-1f1b": {"engine": "pipelining-1f1b", "pipeline": HOSTS},
    "tensor": {"engine": OURS, "tensor": HOSTS},
    "fsdp": {"engine": OURS, "dp-degree": HOSTS, "dp-mode": "fsdp"},
    "allreduce": {"engine": OURS, "dp-degree": HOSTS, "dp-mode": "allreduce"},
}
"""Each variant's layout and engine on the two hosts (the rest of the flags are shared)."""


def run_flags(args: argparse.Namespace, variant: str) -> list[str]:
    """The trainer flags of one run: the global batch split over the variant's replicas."""
    settings = VARIANTS[variant]
    replicas = int(settings.get("dp-degree", 1))
    flags = [
        "--model", args.model, "--batch", str(args.batch // replicas),
        "--micro-batch", str(args.micro_batch), "--iterations", str(args.iterations),
        "--warmup", str(args.warmup), "--threads", "1",
    ]  # fmt: skip
    for name, value in settings.items():
        flags += [f"--{name}", str(value)]
    return flags


def measure_profile(bench: FleetBench, profile: str, args: argparse.Namespace) -> dict:
    """Every variant `args.repeats` times under `profile`; medians and the paired ratios."""
    bench.shape(profile)
    best: dict[str, list[float]] = {variant: [] for variant in args.variants}
    median: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for repeat in range(args.repeats):
        order = args.variants if repeat % 2 == 0 else args.variants[::-1]
        for variant in order:
            summary = bench.train(run_flags(args, variant), timeout=args.timeout)
            total = summary["phases"]["total_s"]
            best[variant].append(total["min"])
            median[variant].append(total["median"])
            print(
                f"  {profile} repeat {repeat} {variant}: best {total['min']:.4f} s, "
                f"median {total['median']:.4f} s",
                flush=True,
            )

    def paired(times: dict[str, list[float]], other: str) -> list[float]:
        return [o / t for o, t in zip(times[OURS], times[other], strict=True)]

    return {
        "profile": profile,
        "iteration_s": {variant: statistics.median(values) for variant, values in best.items()},
        "median_iteration_s": {v: statistics.median(values) for v, values in median.items()},
        "runs_best_s": best,
        "runs_median_s": median,
        "ratio": statistics.median(paired(best, THEIRS)),
        "ratios": paired(best, THEIRS),
        "ratio_of_medians": statistics.median(paired(median, THEIRS)),
        "ours_over": {v: statistics.median(paired(best, v)) for v in args.variants if v != OURS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", nargs="+", default=["default", "1gbit", "200mbit", "50mbit"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print the goal JSON last")
    args = parser.parse_args()
    if OURS not in args.variants or THEIRS not in args.variants:
        parser.error(f"--variants must include {OURS} and {THEIRS}")
    if args.batch % (HOSTS * args.micro_batch):
        parser.error(f"--batch must split into {HOSTS} replicas of whole micro-batches")

    with FleetBench(HOSTS) as bench:
        rows = [measure_profile(bench, profile, args) for profile in args.profiles]
        failures = bench.failures
    print(
        f"model {args.model}, {HOSTS} hosts, global batch {args.batch}, "
        f"micro-batch {args.micro_batch}, {args.iterations} iterations ({args.warmup} warm-up), "
        f"rank 0's best iteration per run, median over {args.repeats} repeats"
    )
    header = " ".join(f"{v:>17}" for v in args.variants)
    print(f"{'profile':>10} {header} {'ratio':>7} {'of medians':>10}")
    for row in rows:
        cells = " ".join(f"{row['iteration_s'][v]:>15.4f} s" for v in args.variants)
        print(f"{row['profile']:>10} {cells} {row['ratio']:>7.3f} {row['ratio_of_medians']:>10.3f}")
    print("ours / each variant (best iterations, median over repeats):")
    for row in rows:
        shares = ", ".join(f"{v} {ratio:.3f}" for v, ratio in row["ours_over"].items())
        print(f"{row['profile']:>10} {shares}")
    if args.json:
        report = {
            "bench": "engines",
            "ran_on": machine_facts() | {"fleet": "local namespaces, one rank per host"},
            "goal": f"best iteration {OURS} / {THEIRS} ≤ {GOAL_RATIO} on every profile",
            "met": all(row["ratio"] <= GOAL_RATIO for row in rows),
            "model": args.model,
            "hosts": HOSTS,
            "variants": {name: VARIANTS[name] for name in args.variants},
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
