"""`wanlab predict MATRIX`: the cost model's iteration time and its parts for every cell."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from experiments import lab
from experiments.axes import predict_columns
from experiments.cli.common import (
    REFERENCE,
    JsonOption,
    console,
    load_fleet,
    matrix_inventory,
    notes,
    print_json,
    print_table,
)
from experiments.costmodel.analytic import DEFAULT_FLOPS
from experiments.costmodel.calibrate import (
    MIN_NATIVE_RATE_BPS,
    Calibration,
    from_flops,
)
from experiments.costmodel.fromresults import ResultsCalibration
from experiments.costmodel.network import DEFAULT_NATIVE, Native
from experiments.costmodel.predict import measured_cells, predict_matrix, store_predictions
from experiments.costmodel.reference import (
    REFERENCE_FILE,
    Reference,
    explain,
    load_reference,
    measured,
)
from experiments.matrix import MatrixSpec, load_matrix
from experiments.results import CELLS, ResultsStore
from inventory.errors import ConfigError, check_option, parsed_option
from inventory.models import Fleet
from netem.pairs import PairMatrix
from netem.units import parse_rate_bps, parse_time_s

NATIVE_LATENCY_S = (0.0, 1.0)
NATIVE_RATE_BPS = (MIN_NATIVE_RATE_BPS, 1e13)
"""What --native-latency and --native-rate may say: up to a second; 100 kbit/s to 10 Tbit/s."""


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
        str | None,
        typer.Option(
            help="One-way latency of an unshaped hop (unless a probe or the reference's "
            "description says; default 50us)."
        ),
    ] = None,
    native_rate: Annotated[
        str | None,
        typer.Option(
            help="Line rate of an unshaped host (unless a probe or the reference's description "
            "says; default 10gbit)."
        ),
    ] = None,
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
    explain_inputs: Annotated[
        bool,
        typer.Option(
            "--explain",
            help=f"With --calibrate {REFERENCE}: print every input of the reference's "
            "description with its source and the term it feeds.",
        ),
    ] = False,
    as_json: JsonOption = False,
):
    """Predict every cell's iteration time and its parts with the analytic cost model."""
    check_option("--flops", flops, 0, 1e21, low_open=True)
    native = _native(native_latency, native_rate)
    from_results = calibrate not in (None, REFERENCE)
    for option, given in (("--calibrate-cell", calibrate_cell is not None), ("--store", store)):
        if given and not from_results:
            raise ConfigError(None, option, "only with --calibrate RESULTS (a results folder)")
    if explain_inputs and calibrate != REFERENCE:
        raise ConfigError(None, "--explain", f"only with --calibrate {REFERENCE}")
    if from_results and not os.path.isfile(Path(calibrate) / CELLS):
        raise ConfigError(calibrate, "--calibrate", f"no {CELLS} there: not a results folder")
    spec = load_matrix(matrix)
    results = reference = None
    if calibrate is None:
        calibration_for = _always(from_flops(flops, native=native or DEFAULT_NATIVE))
    elif calibrate == REFERENCE:
        reference = load_reference()
        calibration_for = _always(reference.calibration(native))
    else:
        results = ResultsStore(calibrate)
        calibration_for = ResultsCalibration(
            results.records(), native or DEFAULT_NATIVE, calibrate_cell, calibrate
        ).for_cell
    fleet = _fleet(spec, inventory)
    finished = measured_cells(results.records()) if results is not None else None
    rows = predict_matrix(spec, calibration_for, fleet, finished)
    if reference is not None:
        _beside_reference(rows, spec, reference)
    if store:
        written = store_predictions(results.directory, rows)
        (notes if as_json else console).print(f"predictions in {written}", highlight=False)
    if explain_inputs:
        first = spec.trainer_config(spec.cells()[0])
        lines = explain(reference, calibration_for({}), first)
        (notes if as_json else console).print("\n".join(lines), highlight=False, soft_wrap=True)
    if as_json:
        print_json(rows)
        return
    print_table(f"predicted: {spec.header.name}", [_flat(row) for row in rows], _columns(rows))
    modelled = [row for row in rows if "calibration" in row]
    if modelled:
        console.print(f"calibration: {modelled[0]['calibration']['source']}", highlight=False)


def _beside_reference(rows: list[dict], spec: MatrixSpec, reference: Reference) -> None:
    """The reference's measured time beside each cell it measured: the same profile and DP
    degree, and the configuration the reference ran."""
    cells = measured(reference)
    configs = {cell.cell_id: spec.trainer_config(cell) for cell in spec.cells()}
    for row in rows:
        cell = cells.get((row["params"]["profile"], row["params"]["dp_degree"]))
        if cell is not None and reference.ran(configs[row["cell_id"]]):
            row["measured_iteration_s"] = cell.iteration_s
            row["error"] = row["predicted_iteration_s"] / cell.iteration_s - 1
            row["measured_source"] = cell.source


def _always(calibration: Calibration):
    return lambda params: calibration


def _native(latency: str | None, rate: str | None) -> Native | None:
    """The options' native network; None when neither is given (the default, or the
    reference's own)."""
    if latency is None and rate is None:
        return None
    return Native(
        latency_s=parsed_option(
            "--native-latency", latency or "50us", parse_time_s, *NATIVE_LATENCY_S
        ),
        rate_bps=parsed_option("--native-rate", rate or "10gbit", parse_rate_bps, *NATIVE_RATE_BPS),
    )


def _fleet(spec: MatrixSpec, option: str | None) -> Fleet | None:
    """The hosts ranks are placed on: `-i`, else the matrix's inventory when a pair matrix
    needs it or it names a file; None (one rank per host, in rank order) otherwise."""
    needed = any(isinstance(t, PairMatrix) for t in spec.targets.values())
    if option is not None:
        return load_fleet(option, check_keys=False)
    chosen = matrix_inventory(spec)
    if needed or (chosen != lab.LOCAL and os.path.isfile(chosen)):
        return load_fleet(chosen, check_keys=False)
    return None


def _flat(row: dict) -> dict:
    if row.get("modelled") is False:
        return {**predict_columns(row["params"]), "predicted s": "not modelled"}
    flat = {
        **predict_columns(row["params"]),
        "predicted s": f"{row['predicted_iteration_s']:.3f}",
        **{name: f"{value:.3f}" for name, value in row["parts"].items()},
    }
    if "measured_iteration_s" in row:
        flat["measured s"] = f"{row['measured_iteration_s']:.3f}"
        flat["error"] = f"{row['error']:+.1%}"
    return flat


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in _flat(row) if c not in columns]
    return columns
