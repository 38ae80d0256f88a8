"""A results folder as pandas frames: one row per cell, and one per configuration point.

A cell is one run of one matrix point (one repeat). The last record of a cell id wins (a cell
retried with `--resume`). Cells the matrix spec lists but no record holds are kept as
`missing`; cells that failed are kept as `failed` with their reason: nothing is dropped.

A *point* is a cell's coordinates without the repeat: its repeats are pooled. Its iteration time
is the mean over every timed iteration of its repeats, its spread the standard deviation of
those same iterations; slowdown is against the same point on the default (unshaped) network.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from experiments.axes import AXES, REPEAT, point_keys, variant_keys
from experiments.costmodel.predict import PREDICTIONS
from experiments.matrix import (
    Axes,
    Cell,
    MatrixHeader,
    check_cell_count,
    matrix_cells,
)
from experiments.results import CELLS, MAX_CELLS_BYTES, CellNetwork, CellRecord, ResultsStore
from experiments.scalespec import ScaleOrigin
from inventory.errors import ConfigError, config_error
from inventory.tomlfile import parse_toml, read_text
from netem.probe import MIN_WINDOW_RTTS

BASELINE = "default"
VARIANT_KEYS = variant_keys() + [a.field for a in AXES if a.trainer_only and not a.optional]
"""Axes a matrix may leave out, and those a workload's cell has no value on: empty in the
frames where it has none."""
POINT_KEYS = point_keys()
NETWORK = [axis for axis in AXES if axis.network]
"""The axes sorted by the matrix's own order of their values (profile, tcp)."""
BY_VALUE = [axis.field for axis in AXES if not axis.network and not axis.optional]
"""The axes sorted by value (an optional axis keeps the matrix's order)."""
PHASES = ["forward_s", "backward_s", "comm_wait_s", "ps_sync_s", "optimizer_s"]


@dataclass(frozen=True)
class Results:
    """One results folder, read."""

    directory: Path
    name: str
    cells: pd.DataFrame
    points: pd.DataFrame
    spec_text: str
    runs: list[dict]
    scale: dict | None = None
    """The matrix's [scale] table when it is a scale model (`experiments.scale`)."""


def read_predictions(directory: Path) -> dict[str, float]:
    """Predicted iteration seconds by cell id from `predictions.jsonl`, when there is one."""
    path = directory / PREDICTIONS
    if not os.path.lexists(path):
        return {}
    predicted = {}
    for number, line in enumerate(read_text(path, MAX_CELLS_BYTES).splitlines(), start=1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            raise ConfigError(str(path), f"line {number}", "is not JSON") from None
        if isinstance(row, dict) and "cell_id" in row and "predicted_iteration_s" in row:
            seconds = row["predicted_iteration_s"]
            if not _finite_number(seconds) or not isinstance(row["cell_id"], str):
                raise ConfigError(str(path), f"line {number}", "needs a cell_id and a finite "
                                  "predicted_iteration_s")  # fmt: skip
            predicted[row["cell_id"]] = seconds
    return predicted


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_spec(path: Path) -> tuple[str, dict]:
    """A results folder's copy of its matrix (text and data; none: "" and {}), with the tables
    the report reads checked: [matrix], [axes], and a scale model's [scale]."""
    if not os.path.lexists(path):
        return "", {}
    text = read_text(path)
    spec = parse_toml(text, str(path))
    for table, model in (("matrix", MatrixHeader), ("axes", Axes), ("scale", ScaleOrigin)):
        if table not in spec:
            continue
        if not isinstance(spec[table], dict):
            raise ConfigError(str(path), table, "must be a table")
        try:
            model(**spec[table])
        except ValidationError as error:
            raise config_error(error, str(path), prefix=table) from None
    if "axes" in spec:
        check_cell_count(MatrixHeader(**spec.get("matrix", {})), Axes(**spec["axes"]), str(path))
    return text, spec


def expected_cells(spec: dict) -> list[Cell]:
    """Every cell the results folder's copy of the matrix names (`read_spec`; none without
    [axes])."""
    if "axes" not in spec:
        return []
    return matrix_cells(Axes(**spec["axes"]), MatrixHeader(**spec.get("matrix", {})).repeats)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _network_columns(network: CellNetwork) -> dict:
    setting = network.setting
    probes = [p for p in network.probe if p.get("ok", True)]
    rtts = [p["rtt_ms_median"] for p in probes if p.get("rtt_ms_median") is not None]
    rates = [
        p["throughput_bps"]
        for p in probes
        if p.get("throughput_bps") and p.get("throughput_window_rtts", math.inf) >= MIN_WINDOW_RTTS
    ]
    if setting.get("kind") == "pairs":
        shapes = [link["shape"] for link in setting.get("links", [])]
        delays = [s.get("delay_ms", 0.0) for s in shapes]
        limited = [s["rate_bps"] for s in shapes if s.get("rate_bps")]
        delay = _mean(delays)
        rate = min(limited) if limited and len(limited) == len(shapes) else None
        unshaped = False
    else:
        delay = setting.get("delay_ms")
        rate = setting.get("rate_bps")
        unshaped = bool(setting) and not any(
            setting.get(key) for key in ("delay_ms", "jitter_ms", "loss_pct", "rate_bps")
        )
    return {
        "setting": setting.get("short"),
        "setting_kind": setting.get("kind"),
        "delay_ms": delay,
        "rate_bps": rate,
        "loss_pct": setting.get("loss_pct"),
        "unshaped": unshaped,
        "rtt_ms": _mean(rtts),
        "probe_bps": _mean(rates),
    }


def cell_row(record: CellRecord, predictions: dict[str, float]) -> dict:
    """One cell record flattened to the report's columns (timings in seconds)."""
    trainer = record.trainer
    workload = record.workload
    if workload is None:
        samples = (trainer.get("batch") or 0) * (trainer.get("dp_degree") or 1)
        width = (trainer.get("pipeline") or 1) * (trainer.get("tensor") or 1)
    else:  # a user's job: one data-parallel group; samples only where the matrix says
        batch = workload.get("batch")
        samples = batch * record.params.dp_degree if batch else math.nan
        width = record.params.dp_degree
    row = {
        "cell_id": record.cell_id,
        "status": "ok" if record.ok else "failed",
        "reason": None if record.ok else (record.reason or "no summary"),
        **record.params.model_dump(),
        **_network_columns(record.network),
        "batch": trainer.get("batch"),
        "pipeline": trainer.get("pipeline"),
        "samples_per_iteration": samples,
        "predicted_s": predictions.get(record.cell_id),
        "compute": compute_label(trainer),
    }
    if not record.ok:
        return row
    summary = record.summary
    phases = summary.phases
    total = phases["total_s"]
    placement = record.placement or {}
    unmeasured = 0.0 if workload is None else math.nan  # a workload's job says what it timed
    row |= {
        "iter_mean_s": total["mean"],
        "iter_std_s": total.get("std"),
        "iter_median_s": total.get("median"),
        "iter_p10_s": total.get("p10"),
        "iter_p90_s": total.get("p90"),
        "timed_iterations": summary.timed_iterations,
        "world_size": summary.world_size,
        "hosts": len(set(placement.values())) or summary.world_size,
        "placement": _pipelines(placement, width),
        "placement_rule": record.placement_rule,
        "tokens_per_iteration": summary.tokens_per_iteration,
        **{phase: (phases.get(phase) or {}).get("mean", unmeasured) for phase in PHASES},
    }
    return row


def compute_label(trainer: dict) -> str:
    """`real`, or `emulated (tensors ×S)` for a cell whose stages held for given times."""
    emulate = trainer.get("emulate")
    return "real" if not emulate else f"emulated (tensors ×{emulate['scale']:g})"


def _pipelines(placement: dict[int, str], width: int) -> str | None:
    """Rank → host as each pipeline's hosts in rank order (stages, each stage's tensor shards
    together), pipelines apart: "h0 h1; h2 h3"; `width` is ranks per pipeline."""
    if not placement:
        return None
    hosts = [placement[rank] for rank in sorted(placement)]
    return "; ".join(" ".join(hosts[i : i + width]) for i in range(0, len(hosts), width))


def _missing_row(cell: Cell) -> dict:
    return {
        "cell_id": cell.cell_id,
        "status": "missing",
        "reason": "no record in " + CELLS,
        **cell.params(),
    }


def cells_frame(
    records: list[CellRecord], spec: dict, predictions: dict[str, float]
) -> pd.DataFrame:
    """One row per cell: recorded ones, then the spec's cells that have no record."""
    rows = [cell_row(r, predictions) for r in records]
    seen = {row["cell_id"] for row in rows}
    rows += [_missing_row(c) for c in expected_cells(spec) if c.cell_id not in seen]
    frame = pd.DataFrame(rows)
    for column in ["iter_mean_s", "iter_std_s", "predicted_s", "rtt_ms", "probe_bps", *PHASES]:
        frame[column] = pd.to_numeric(frame[column]) if column in frame else math.nan
    for column in VARIANT_KEYS:
        frame[column] = frame[column].fillna("") if column in frame else ""
    for axis in NETWORK:
        order = _axis_order(spec, frame, axis.field, axis.key)
        frame[f"_{axis.field}"] = frame[axis.field].map(order.index)
    network = [f"_{axis.field}" for axis in NETWORK]
    frame = frame.sort_values([*network, *BY_VALUE, REPEAT], kind="stable")
    return frame.drop(columns=network).reset_index(drop=True)


def _axis_order(spec: dict, frame: pd.DataFrame, column: str, axis: str) -> list[str]:
    """The values of `column` in the matrix's order of `axis`, then any others as found."""
    listed = list((spec.get("axes") or {}).get(axis) or [])
    return listed + [v for v in frame[column].drop_duplicates() if v not in listed]


def _first(group: pd.DataFrame, column: str):
    """The first recorded value of `column` in the group (missing cells have none)."""
    values = group[column].dropna() if column in group else []
    return values.iloc[0] if len(values) else None


def _pool(group: pd.DataFrame) -> dict:
    """A point's repeats pooled: weighted mean, pooled standard deviation, medians of probes."""
    ok = group[group["status"] == "ok"]
    out = {
        "status": "ok"
        if len(ok)
        else ("failed" if (group["status"] == "failed").any() else "missing"),
        "reason": None if len(ok) else "; ".join(sorted(set(group["reason"].dropna()))),
        "repeats_ok": len(ok),
        "repeats": len(group),
        **{
            key: _first(group, key)
            for key in ("setting", "setting_kind", "delay_ms", "rate_bps", "compute")
        },
        "unshaped": bool(group["unshaped"].fillna(False).any()) if "unshaped" in group else False,
        "rtt_ms": group["rtt_ms"].median(),
        "probe_bps": group["probe_bps"].median(),
        "predicted_s": group["predicted_s"].mean(),
    }
    if not len(ok):
        return out
    weights = ok["timed_iterations"].astype(float)
    mean = (ok["iter_mean_s"] * weights).sum() / weights.sum()
    variance = ((ok["iter_std_s"] ** 2 + (ok["iter_mean_s"] - mean) ** 2) * weights).sum()
    out |= {
        "iter_mean_s": mean,
        "iter_std_s": math.sqrt(variance / weights.sum()),
        "timed_iterations": int(weights.sum()),
        "hosts": ok["hosts"].max(),
        "samples_per_iteration": ok["samples_per_iteration"].iloc[0],
        "tokens_per_iteration": ok["tokens_per_iteration"].iloc[0],
        **{phase: (ok[phase] * weights).sum(min_count=1) / weights.sum() for phase in PHASES},
    }
    return out


def points_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per point (repeats pooled), with throughput, phases, slowdown and efficiency."""
    groups = cells.groupby(POINT_KEYS, sort=False, dropna=False)
    points = pd.DataFrame([dict(zip(POINT_KEYS, key, strict=True)) | _pool(g) for key, g in groups])
    numeric = ["iter_mean_s", "iter_std_s", "samples_per_iteration", "tokens_per_iteration"]
    for column in [*numeric, "hosts", "predicted_s", *PHASES]:
        points[column] = pd.to_numeric(points[column]) if column in points else math.nan
    points["samples_s"] = points["samples_per_iteration"] / points["iter_mean_s"]
    points["tokens_s"] = points["tokens_per_iteration"] / points["iter_mean_s"]
    points["samples_s_per_host"] = points["samples_s"] / points["hosts"]
    points["compute_s"] = points["forward_s"] + points["backward_s"]
    parts = points[["compute_s", "comm_wait_s", "ps_sync_s", "optimizer_s"]]
    accounted = parts.sum(axis=1, skipna=False)  # a phase not measured leaves idle unknown
    points["idle_s"] = (points["iter_mean_s"] - accounted).clip(lower=0)
    points["baseline_s"] = _baseline(points, "iter_mean_s", by_dp=True)
    points["slowdown"] = points["iter_mean_s"] / points["baseline_s"]
    reference = _baseline(points, "samples_s_per_host", by_dp=False)
    points["efficiency"] = points["samples_s_per_host"] / reference
    points["prediction_error"] = points["predicted_s"] / points["iter_mean_s"] - 1
    path_bps = points["probe_bps"].fillna(points["rate_bps"])
    points["bdp_bytes"] = path_bps * points["rtt_ms"] / 1000 / 8
    network = [f"_{axis.field}" for axis in NETWORK]
    for axis in NETWORK:  # in the order the cells (sorted by the matrix) hold them
        points[f"_{axis.field}"] = points[axis.field].map(
            cells[axis.field].drop_duplicates().tolist().index
        )
    points = points.sort_values([*network, *BY_VALUE], kind="stable")
    return points.drop(columns=network).reset_index(drop=True)


def is_baseline(points: pd.DataFrame) -> pd.Series:
    """Points on the default network: the profile named `default`, or an unshaped setting."""
    named = points["profile"] == BASELINE
    return named if named.any() else points["unshaped"].fillna(False).astype(bool)


def _baseline(points: pd.DataFrame, column: str, by_dp: bool) -> pd.Series:
    """The value of `column` on the default network for each point's variant.

    by_dp: the same DP degree (slowdown); otherwise the smallest DP degree measured there
    (per-host efficiency). Always with the same TCP setting."""
    keys = [key for key in POINT_KEYS if key not in ("profile", "dp_degree")]
    keys += ["dp_degree"] if by_dp else []
    base = points[is_baseline(points) & points[column].notna()]
    if not by_dp:
        base = base.sort_values("dp_degree").drop_duplicates(keys)
    lookup = base.set_index(keys)[column]
    index = pd.MultiIndex.from_frame(points[keys])
    return pd.Series(lookup.reindex(index).to_numpy(), index=points.index)


def load_results(directory: str | Path) -> Results:
    """Read a results folder: its cells, points, matrix spec text and run environments."""
    directory = Path(directory)
    records = ResultsStore(directory).latest()
    spec_text, spec = read_spec(directory / "matrix.toml")
    if not records and not expected_cells(spec):
        raise ConfigError(str(directory / CELLS), None, "holds no cell records")
    run_path = directory / "run.json"
    runs = _read_runs(run_path)
    cells = cells_frame(records, spec, read_predictions(directory))
    name = spec.get("matrix", {}).get("name") or directory.name
    scale = spec.get("scale")
    return Results(directory, name, cells, points_frame(cells), spec_text, runs, scale)


def _read_runs(path: Path) -> list[dict]:
    """`run.json`: the environment of each run into the folder (none if there is no file)."""
    if not os.path.lexists(path):
        return []
    try:
        runs = json.loads(read_text(path, MAX_CELLS_BYTES))
    except json.JSONDecodeError as error:
        raise ConfigError(str(path), None, f"not readable as JSON: {error}") from None
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ConfigError(str(path), None, "must be a list of objects, one per run")
    return runs


COMPARED = ["status", "iter_mean_s", "iter_std_s", "samples_s", "tokens_s", "slowdown"]


def compare_points(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Points of two runs side by side (suffixes `_a`, `_b`), with B/A ratios.

    A point only one run has is kept, its other side `missing`."""
    keys = pd.concat([a[POINT_KEYS], b[POINT_KEYS]]).drop_duplicates()
    sides = [frame[POINT_KEYS + COMPARED].add_suffix(s) for frame, s in ((a, "_a"), (b, "_b"))]
    merged = keys.reset_index(drop=True)
    for side, suffix in zip(sides, ("_a", "_b"), strict=True):
        side = side.rename(columns={k + suffix: k for k in POINT_KEYS})
        merged = merged.merge(side, on=POINT_KEYS, how="left")
    for side in ("_a", "_b"):
        merged["status" + side] = merged["status" + side].fillna("missing")
    merged["iter_ratio"] = merged["iter_mean_s_b"] / merged["iter_mean_s_a"]
    merged["samples_ratio"] = merged["samples_s_b"] / merged["samples_s_a"]
    merged["slowdown_ratio"] = merged["slowdown_b"] / merged["slowdown_a"]
    return merged
