"""Iteration time and its phases for pipeline degree 2 and 4 on the local fleet, against the bound.

Brings up a local fleet of its own (prefix `wlp`, 198.18.16.0/24, unshaped), runs each pipeline
degree through the matrix runner, one rank (one thread) per host, gloo over the hosts' veths,
and removes the fleet. The GPipe bound is
(M + S − 1)·(t_f + t_b) with t_f, t_b the slowest stage's forward and backward time per
micro-batch, measured in the same run; the optimizer step, which follows the pipeline, is added
to it. Goal: the mean iteration time is within 1.10× of that bound. With unequal stages that
bound charges every slot at the slowest stage's pace; the critical path with each stage's own
times, Σ_s(t_f,s + t_b,s) + (M − 1)·(t_f + t_b) + optimizer, is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from experiments.lab.fleet import LocalFleet
from experiments.matrix import load_matrix
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner
from inventory.loader import load_inventory

GOAL_RATIO = 1.10
PHASES = ("forward_s", "backward_s", "comm_wait_s", "ps_sync_s", "optimizer_s")


MATRIX = """
[matrix]
name = "trainer-bound-p{stages}"
[trainer]
model = "{model}"
batch = {batch}
pipeline = {stages}
iterations = {iterations}
warmup = {warmup}
threads = 1
[axes]
profiles = ["default"]
micro_batches = [{micro_batch}]
[probe]
seconds = 0.2
count = 5
"""


def run(stages: int, args: argparse.Namespace, inventory: Path, tmp: Path) -> dict:
    """One run with `stages` pipeline stages, one rank per local host; its summary."""
    matrix = tmp / f"p{stages}.toml"
    matrix.write_text(
        MATRIX.format(
            stages=stages,
            model=args.model,
            batch=args.batch,
            micro_batch=args.micro_batch,
            iterations=args.iterations,
            warmup=args.warmup,
        )
    )
    store = ResultsStore(tmp / f"p{stages}")
    runner = MatrixRunner(
        load_matrix(matrix), load_inventory(inventory), store, Console(stderr=True)
    )
    runner.run()
    (record,) = store.records()
    if not record.ok:
        sys.exit(f"the {stages}-stage run failed: {record.reason}")
    return record.summary.model_dump()


def figures(summary: dict) -> dict:
    """Measured time, its phases on rank 0, and the GPipe bound from per-stage times."""
    cfg = summary["config"]
    n_micro = cfg["batch"] // cfg["micro_batch"]
    n_stages = cfg["pipeline"]
    t_f = max(s["forward_per_micro_s"] for s in summary["stages"])
    t_b = max(s["backward_per_micro_s"] for s in summary["stages"])
    t_opt = max(s["mean_s"]["optimizer_s"] for s in summary["stages"])
    bound = (n_micro + n_stages - 1) * (t_f + t_b) + t_opt
    forwards = [s["forward_per_micro_s"] for s in summary["stages"]]
    backwards = [s["backward_per_micro_s"] for s in summary["stages"]]
    critical = sum(forwards) + sum(backwards) + (n_micro - 1) * (t_f + t_b) + t_opt
    measured = summary["phases"]["total_s"]["mean"]
    return {
        "stages": n_stages,
        "micro_batches": n_micro,
        "iteration_s": measured,
        "iteration_median_s": summary["phases"]["total_s"]["median"],
        "iteration_std_s": summary["phases"]["total_s"]["std"],
        "rank0_phases_s": {p: summary["phases"][p]["mean"] for p in PHASES},
        "t_f_s": t_f,
        "t_b_s": t_b,
        "optimizer_s": t_opt,
        "per_stage_forward_s": forwards,
        "per_stage_backward_s": backwards,
        "bound_s": bound,
        "ratio": measured / bound,
        "critical_path_s": critical,
        "ratio_to_critical_path": measured / critical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--json", action="store_true", help="print the goal JSON last")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wanlab-bench-trainer-") as tmp:
        fleet = LocalFleet(prefix="wlp", subnet="198.18.16.0/24", home=Path(tmp))
        try:
            inventory = fleet.up(max(args.stages))
            rows = [figures(run(stages, args, inventory, Path(tmp))) for stages in args.stages]
        finally:
            fleet.down()
    print(
        f"model {args.model}, batch {args.batch}, micro-batch {args.micro_batch}, "
        f"{args.iterations} iterations ({args.warmup} warm-up), one rank (one thread) per local "
        "host, unshaped"
    )
    columns = ["S", "M", "iter s", "bound s", "ratio", "crit s", "t_f ms", "t_b ms"]
    print(" ".join(f"{c:>8}" for c in columns + [p[:-2] for p in PHASES]))
    for r in rows:
        cells = [
            r["stages"],
            r["micro_batches"],
            f"{r['iteration_s']:.4f}",
            f"{r['bound_s']:.4f}",
            f"{r['ratio']:.3f}",
            f"{r['critical_path_s']:.4f}",
            f"{r['t_f_s'] * 1e3:.2f}",
            f"{r['t_b_s'] * 1e3:.2f}",
            *(f"{r['rank0_phases_s'][p]:.4f}" for p in PHASES),
        ]
        print(" ".join(f"{c:>8}" for c in cells))
    if args.json:
        goal = f"mean iteration ≤ {GOAL_RATIO}× ((M+S−1)·(t_f+t_b) + optimizer), unshaped"
        report = {
            "bench": "trainer",
            "goal": goal,
            "met": all(r["ratio"] <= GOAL_RATIO for r in rows),
            "model": args.model,
            "batch": args.batch,
            "micro_batch": args.micro_batch,
            "runs": rows,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
