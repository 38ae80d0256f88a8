"""The cost model at scale and against measurements.

(1) A 1,024-host world-wide scenario (GPT-3 XL, 16 stages × 64 pipelines over the regions of
    experiments/world-regions.toml, compute calibrated on the reference experiment): time of one
    full evaluation, goal under 1 s; plus the greedy placement search against random placements.
(2) With --results DIR (a folder `wanlab run` wrote): every measured cell predicted from the
    calibration cell alone (the unshaped cell of the same DP degree, micro-batch, DP mode, TCP
    and repeat), goal every cell within 10 % of its measured iteration time, the mean over its
    repeats where the matrix repeats it (a single repeat's error is reported beside it). A scale
    model's folder (`wanlab scale`) is judged instead by its slowdowns: every cell's measured
    slowdown within 10 % of the one the cost model predicts for the target cell it stands for.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

# This file is named like a module it measures: keep its own folder off the import path.
import numpy as np

from experiments.costmodel.analytic import evaluate
from experiments.costmodel.calibrate import workload_of
from experiments.costmodel.fromresults import ResultsCalibration, stage_times
from experiments.costmodel.predict import measured_cells, predict_config
from experiments.costmodel.reference import reference_calibration
from experiments.costmodel.simulate import explore, random_placements, world_scenario
from experiments.matrix import load_matrix
from experiments.report.data import load_results
from experiments.report.scalemodel import scale_comparison
from experiments.results import ResultsStore
from netem.pairs import PairMatrix
from trainer.config import TrainerConfig

GOAL_EVALUATE_S = 1.0
GOAL_ERROR = 0.10


def scale(args: argparse.Namespace) -> dict:
    """Part (1): the world-wide scenario, per DP mode."""
    calibration = reference_calibration()
    figures = {}
    for dp_mode in ("ps", "allreduce"):
        config = TrainerConfig(
            model="gpt3-xl", batch=64, pipeline=16, dp_degree=args.hosts // 16, recompute=True,
            dp_mode=dp_mode,
        )  # fmt: skip
        built = time.perf_counter()
        scenario = world_scenario(config, calibration, args.hosts)
        built = time.perf_counter() - built
        one = random_placements(scenario, 1, np.random.default_rng(0))
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            evaluate(scenario.workload, scenario.compute, scenario.network, one)
            timings.append(time.perf_counter() - start)
        found = explore(scenario, restarts=args.restarts, randoms=args.randoms)
        figures[dp_mode] = {
            "build_network_s": built,
            "evaluate_one_s": min(timings),
            **found,
        }
    worst = max(f["evaluate_one_s"] for f in figures.values())
    return {
        "goal": f"one evaluation of the {args.hosts}-host scenario < {GOAL_EVALUATE_S} s",
        "met": worst < GOAL_EVALUATE_S,
        "evaluate_one_s": worst,
        "scenarios": figures,
    }


def against_target(directory: Path) -> dict:
    """Part (2) for a scale model: its measured slowdowns against the target's predicted."""
    results = load_results(directory)
    merged = scale_comparison(results.points, results.scale)
    done = merged[merged["status"] == "ok"]
    own = results.scale.get("profiles") or {}
    cells = [
        {
            "target_profile": row.target_profile,
            "scale_factor": own.get(row.profile, results.scale)["factor"],
            "dp_degree": int(row.dp_degree),
            "dp_mode": row.dp_mode,
            "measured_s": row.iter_mean_s,
            "measured_slowdown": row.lab_slowdown,
            "target_predicted_s": row.target_s,
            "target_slowdown": row.target_slowdown,
            "error": row.difference,
        }
        for row in done.itertuples()
    ]
    if not cells:
        return {"run": False, "why": f"no finished cell in {directory}"}
    worst = max(abs(c["error"]) for c in cells)
    return {
        "run": True,
        "goal": f"every cell's slowdown within {GOAL_ERROR:.0%} of the target's predicted",
        "met": worst <= GOAL_ERROR and len(cells) == len(merged),
        "max_abs_error": worst,
        "target": results.scale["target"],
        "results": str(directory),
        "cells": cells,
    }


def against_results(directory: Path) -> dict:
    """Part (2): every measured cell predicted from its calibration cell."""
    store = ResultsStore(directory)
    spec = load_matrix(directory / "matrix.toml")
    if spec.scale is not None:
        return against_target(directory)
    records = store.records()
    calibrator = ResultsCalibration(records, source=str(directory))
    measured = measured_cells(records)
    cells, points = [], {}
    for cell in spec.cells():
        record = measured.get(cell.cell_id)
        target = spec.targets[cell.profile]
        if record is None or isinstance(target, PairMatrix):
            continue
        params = cell.params()
        config = spec.trainer_config(cell)
        calibration = calibrator.for_cell(params)
        row = predict_config(config, target, calibration, None, spec.tcp_settings(cell))
        # the same network, with the cell's own measured compute: what the network model alone
        # gets wrong, apart from this machine's compute noise between cells
        own_stages = stage_times(record.summary, config.pipeline)
        own = replace(calibration, stages=own_stages, measured=workload_of(config))
        own_row = predict_config(config, target, own, None, spec.tcp_settings(cell))
        actual = record.summary.iteration_s
        points[cell.cell_id] = cell.point_id
        cells.append(
            {
                "cell_id": cell.cell_id,
                "calibrated_on": calibrator.choose(params).cell_id,
                "measured_s": actual,
                "predicted_s": row["predicted_iteration_s"],
                "error": row["predicted_iteration_s"] / actual - 1,
                "own_compute_predicted_s": own_row["predicted_iteration_s"],
                "own_compute_error": own_row["predicted_iteration_s"] / actual - 1,
                "parts": row["parts"],
            }
        )
    if not cells:
        return {"run": False, "why": f"no finished profile cell in {directory}"}
    pooled = over_repeats(cells, points)
    worst = max(abs(c["error"]) for c in pooled)
    return {
        "run": True,
        "goal": f"every cell within {GOAL_ERROR:.0%} of its measurement (its repeats' mean)",
        "met": worst <= GOAL_ERROR,
        "max_abs_error": worst,
        "max_abs_own_compute_error": max(abs(c["own_compute_error"]) for c in pooled),
        "max_abs_single_repeat_error": max(abs(c["error"]) for c in cells),
        "results": str(directory),
        "cells": pooled,
        "repeats": cells,
    }


def over_repeats(cells: list[dict], points: dict[str, str]) -> list[dict]:
    """Each cell's repeats together (`points`: cell id → its point's id): the mean measured and
    predicted times (each repeat is predicted from its own pass's calibration) and the error
    between them."""
    groups: dict[str, list[dict]] = {}
    for cell in cells:
        groups.setdefault(points[cell["cell_id"]], []).append(cell)
    pooled = []
    for cell_id, repeats in groups.items():
        measured = float(np.mean([c["measured_s"] for c in repeats]))
        predicted = float(np.mean([c["predicted_s"] for c in repeats]))
        own = float(np.mean([c["own_compute_predicted_s"] for c in repeats]))
        pooled.append(
            {
                "cell_id": cell_id,
                "repeats": len(repeats),
                "measured_s": measured,
                "measured_spread": max(c["measured_s"] for c in repeats)
                / min(c["measured_s"] for c in repeats)
                - 1,
                "predicted_s": predicted,
                "error": predicted / measured - 1,
                "own_compute_error": own / measured - 1,
            }
        )
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1024)
    parser.add_argument("--restarts", type=int, default=4, help="Greedy placements to try.")
    parser.add_argument("--randoms", type=int, default=4, help="Random placements to compare.")
    parser.add_argument("--results", type=Path, help="A results folder for part (2).")
    parser.add_argument("--json", action="store_true", help="End with one JSON line.")
    args = parser.parse_args()

    part1 = scale(args)
    for mode, f in part1["scenarios"].items():
        print(
            f"{args.hosts} hosts, {mode}: one evaluation {f['evaluate_one_s'] * 1e3:.0f} ms; "
            f"best placement {f['best_iteration_s']:.1f} s/iteration "
            f"vs random {np.mean(f['random_iteration_s']):.1f} s "
            f"(slowest hop {f['best_slowest_hop_s'] * 1e3:.0f} vs "
            f"{np.mean(f['random_slowest_hop_s']) * 1e3:.0f} ms), search {f['search_s']:.2f} s"
        )
    if args.results is None:
        part2 = {"run": False, "why": "no --results folder given"}
        print("part (2), the model against a measured matrix: not run (no --results)")
    else:
        part2 = against_results(args.results)
        for c in part2.get("repeats", []):
            print(
                f"{c['cell_id']}: measured {c['measured_s']:.4f} s, predicted "
                f"{c['predicted_s']:.4f} s ({c['error']:+.1%}), calibrated on "
                f"{c['calibrated_on']}"
            )
        for c in part2.get("cells", []):
            if "repeats" in c:
                print(
                    f"{c['cell_id']}, mean of {c['repeats']} (spread {c['measured_spread']:.1%}): "
                    f"measured {c['measured_s']:.4f} s, predicted {c['predicted_s']:.4f} s "
                    f"({c['error']:+.1%})"
                )
            elif "target_profile" in c:
                print(
                    f"{c['target_profile']} DP {c['dp_degree']}: scale model "
                    f"{c['measured_s']:.2f} s (×{c['measured_slowdown']:.3f}), target predicted "
                    f"{c['target_predicted_s']:.2f} s (×{c['target_slowdown']:.3f}): "
                    f"{c['error']:+.1%}"
                )
    met = part1["met"] and (part2.get("met") if part2["run"] else True)
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "predict",
                    "goal": f"{part1['goal']}; {part2.get('goal', 'part (2) not run')}",
                    "met": met,
                    "scale": part1,
                    "against_measurements": part2,
                }
            )
        )


if __name__ == "__main__":
    main()
