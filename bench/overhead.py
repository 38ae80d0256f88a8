"""Per-cell overhead of the matrix runner on the local demo, as a share of each cell's time.

Overhead is everything in a cell but the training iterations themselves: shaping and reading
it back, the probe, handing the run to the workers (process-group set-up), collecting, reset.
Goal: at most 10 % of every cell's time.

Without --results it brings up its own local fleet (prefix `wlo`, 198.18.14.0/24, with a delay
node where this kernel has no netem), runs `experiments/matrices/local-demo.toml`, and removes
the fleet (`--out DIR` keeps that run's results); with --results DIR it reads an earlier run of
that matrix instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console

from experiments import lab
from experiments.lab.demo import DEMO_MATRIX
from experiments.lab.fleet import LocalFleet
from experiments.matrix import load_matrix
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner, interrupts_held
from inventory.loader import load_inventory

GOAL_SHARE = 0.10


def run_demo_matrix(out: Path) -> None:
    """The demo matrix on a fleet of the bench's own."""
    with tempfile.TemporaryDirectory() as home:
        fleet = LocalFleet(prefix="wlo", subnet="198.18.14.0/24", home=Path(home))
        try:
            inventory = load_inventory(lab.up(4, "auto", fleet))
            spec = load_matrix(DEMO_MATRIX)
            MatrixRunner(spec, inventory, ResultsStore(out), Console(stderr=True)).run()
        finally:
            with interrupts_held():
                lab.down(fleet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--results", type=Path, help="read this results folder instead")
    parser.add_argument("--out", type=Path, help="keep the run's results in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results or args.out or Path(tmp) / "results"
        if args.results is None:
            run_demo_matrix(results)
        records = [r for r in ResultsStore(results).records() if r.ok]
    rows = []
    for record in records:
        timing = record.timing
        rows.append({"cell": record.cell_id} | {key: getattr(timing, key) for key in
                    ("cell_s", "training_s", "overhead_s", "overhead_share")})  # fmt: skip
        print(
            f"{rows[-1]['cell']:<40} cell {rows[-1]['cell_s']:7.2f} s  overhead "
            f"{rows[-1]['overhead_s']:5.2f} s  ({rows[-1]['overhead_share']:.2%})"
        )
    total = sum(r["overhead_s"] for r in rows) / sum(r["cell_s"] for r in rows)
    worst = max(r["overhead_share"] for r in rows)  # judged unrounded
    print(
        f"overhead share: worst cell {worst:.2%}, median "
        f"{statistics.median(r['overhead_share'] for r in rows):.2%}, whole matrix {total:.2%} "
        f"(goal <= {GOAL_SHARE:.0%} per cell)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "overhead",
                    "goal": f"every cell's overhead <= {GOAL_SHARE:.0%}",
                    "met": worst <= GOAL_SHARE,
                    "worst_share": worst,
                    "matrix_share": round(total, 4),
                    "cells": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
