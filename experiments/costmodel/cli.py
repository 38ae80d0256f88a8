"""`wanlab predict MATRIX`: the cost model's iteration time and its parts for every cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from experiments.costmodel.analytic import DEFAULT_FLOPS
from experiments.costmodel.calibrate import (
    REFERENCE_FILE,
    Calibration,
    ResultsCalibration,
    from_flops,
)
from experiments.costmodel.calibrate import reference_calibration as calibrate_on_reference
from experiments.costmodel.network import Native
from experiments.costmodel.predict import measured_cells, predict_matrix, store_predictions
from experiments.matrix import MatrixSpec, load_matrix
from experiments.results import ResultsStore
from inventory.cli import JsonOption, console, print_table
from inventory.errors import ConfigError, check_option
from inventory.loader import LOCAL, load_inventory
from inventory.models import Fleet
from netem.pairs import PairMatrix
from netem.units import parse_rate_bps, parse_time_ms

REFERENCE = "reference"


def predict(
    matrix: Annotated[Path, typer.Argument(help="Matrix spec (TOML).")],
    calibrate: Annotated[
        str | None,
        typer.Option(
            help="A results folder to take compute times (and the native network) from, or "
            f"`{REFERENCE}` for the reference experiment ({REFERENCE_FILE.name}). "
            "Without it, compute comes from model FLOPs at --flops."
        ),
    ] = None,
    calibrate_cell: Annotated[
        str | None, typer.Option(help="Calibrate every cell on this measured cell id.")
    ] = None,
    flops: Annotated[
        float,
        typer.Option(help="FLOP/s per device when not calibrated (default: a V100-class fp32)."),
    ] = DEFAULT_FLOPS,
    native_latency: Annotated[
        str, typer.Option(help="One-way latency of an unshaped hop (unless a probe says).")
    ] = "50us",
    native_rate: Annotated[
        str, typer.Option(help="Line rate of an unshaped host (unless a probe says).")
    ] = "10gbit",
    inventory: Annotated[
        str | None,
        typer.Option(
            "-i",
            "--inventory",
            help="Hosts for pair-matrix cells and for placing ranks on hosts with several "
            "slots; default: the matrix's (when it names a file).",
        ),
    ] = None,
    store: Annotated[
        bool, typer.Option(help="Write predictions.jsonl into the --calibrate results folder.")
    ] = False,
    as_json: JsonOption = False,
):
    """Predict every cell's iteration time and its parts with the analytic cost model."""
    check_option("--flops", flops, 0, 1e21, low_open=True)
    spec = load_matrix(matrix)
    native = _native(native_latency, native_rate)
    results = None
    if calibrate is None:
        calibration_for = _always(from_flops(flops, native=native))
    elif calibrate == REFERENCE:
        calibration_for = _always(calibrate_on_reference(native))
    else:
        results = ResultsStore(calibrate)
        if not results.cells_path.is_file():
            raise ConfigError(calibrate, "--calibrate", f"no {results.cells_path.name} there")
        calibration_for = ResultsCalibration(
            results.records(), native, calibrate_cell, calibrate
        ).for_cell
    if store and results is None:
        raise ConfigError(str(matrix), "--store", "needs --calibrate RESULTS (a results folder)")
    fleet = _fleet(spec, inventory)
    measured = measured_cells(results.records()) if results is not None else None
    rows = predict_matrix(spec, calibration_for, fleet, measured)
    if store:
        console.print(f"predictions in {store_predictions(results.directory, rows)}")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print_table(f"predicted: {spec.header.name}", [_flat(row) for row in rows], _columns(rows))
    console.print(f"calibration: {rows[0]['calibration']['source']}", highlight=False)


def _always(calibration: Calibration):
    return lambda params: calibration


def _native(latency: str, rate: str) -> Native:
    try:
        return Native(latency_s=parse_time_ms(latency) / 1000, rate_bps=parse_rate_bps(rate))
    except ValueError as error:
        raise ConfigError(None, "--native-latency/--native-rate", str(error)) from None


def _fleet(spec: MatrixSpec, option: str | None) -> Fleet | None:
    """The hosts ranks are placed on: `-i`, else the matrix's inventory when a pair matrix
    needs it or it names a file; None (one rank per host, in rank order) otherwise."""
    needed = any(isinstance(t, PairMatrix) for t in spec.targets.values())
    if option is not None:
        return load_inventory(option, check_keys=False)
    chosen = spec.header.inventory
    if chosen != LOCAL:
        chosen = str(spec.source.parent / chosen)
        if needed or Path(chosen).is_file():
            return load_inventory(chosen, check_keys=False)
    return load_inventory(chosen, check_keys=False) if needed else None


def _flat(row: dict) -> dict:
    params = row["params"]
    flat = {
        "profile": params["profile"],
        "dp_degree": params["dp_degree"],
        "mb": params["micro_batch"],
        "engine": f"{params['engine']}/{params['dp_mode']}",
        **_variant(params),
        "predicted s": f"{row['predicted_iteration_s']:.3f}",
        **{name: f"{value:.3f}" for name, value in row["parts"].items()},
    }
    if "measured_iteration_s" in row:
        flat["measured s"] = f"{row['measured_iteration_s']:.3f}"
        flat["error"] = f"{row['error']:+.1%}"
    return flat


def _variant(params: dict) -> dict:
    """The layout, precision and recompute columns, for the axes the matrix has."""
    recompute = params.get("recompute")
    shown = {
        "layout": params.get("layout"),
        "dtype": params.get("dtype"),
        "recompute": None if recompute is None else ("yes" if recompute else "no"),
    }
    return {name: value for name, value in shown.items() if value is not None}


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in _flat(row) if c not in columns]
    return columns
