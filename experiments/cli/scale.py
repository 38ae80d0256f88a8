"""`wanlab scale TARGET --to local`: write the scale model of a matrix for the local lab."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from experiments import lab
from experiments.cli.common import (
    REFERENCE,
    JsonOption,
    console,
    load_fleet,
    print_json,
    print_table,
)
from experiments.costmodel.calibrate import Calibration, from_flops
from experiments.costmodel.fromresults import ResultsCalibration
from experiments.costmodel.predict import measured_cells
from experiments.costmodel.reference import reference_calibration
from experiments.costmodel.tcp import SEGMENT_HEADER_BYTES
from experiments.matrix import MatrixSpec, load_matrix
from experiments.results import CellRecord, ResultsStore
from experiments.scale import (
    Lab,
    Measured,
    baseline_profile,
    derive,
    scaled_matrix,
    scaled_name,
)
from inventory.errors import ConfigError, check_option, parsed_option
from inventory.safewrite import check_target, write_file
from netem.fleet import FleetNetem
from netem.units import parse_rate_bps, parse_time_s

PROBE_SECONDS = 2.0
PROBE_HOSTS = 4
"""The lab's figures come from a ring of its first hosts (every hop of the lab is alike)."""
CEILING_BPS = (1e6, 1e13)
"""The lab's forwarding ceiling a person may give: 1 Mbit/s to 10 Tbit/s."""
LATENCY_S = (0.0, 0.1)
"""The one-way latency of the lab's unshaped hop a person may give: 0 to 100 ms."""


def scale(
    target: Annotated[
        Path,
        typer.Argument(
            help="The matrix to model (TOML), or a results folder of a run on the real fleet "
            "(its matrix, calibrated on its own cells, beside its measured times)."
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            help="The lab's inventory (is there a delay node?); its hosts are probed for the "
            "figures below that are not given."
        ),
    ] = lab.LOCAL,
    calibrate: Annotated[
        str | None,
        typer.Option(
            help=f"`{REFERENCE}` (a matrix's default): the target's compute and TCP from the "
            "reference experiment; `flops`: compute from model FLOPs (a V100-class fp32 rate). "
            "A results folder calibrates on its own cells."
        ),
    ] = None,
    ceiling: Annotated[
        str | None,
        typer.Option(help="The most the lab forwards (e.g. 500mbit); default: probed on --to."),
    ] = None,
    lab_latency: Annotated[
        str | None,
        typer.Option(
            help="One-way latency of the lab's unshaped hop (taken off each delay unless --to "
            "has a delay node, which takes its own out); default: probed on --to."
        ),
    ] = None,
    lab_receive_share: Annotated[
        float | None,
        typer.Option(
            help="The share of a receive buffer the lab's kernel offers as window (from 6.6; "
            "e.g. 0.72); default: probed on --to."
        ),
    ] = None,
    iterations: Annotated[int, typer.Option(help="Iterations per cell of the scaled matrix.")] = 3,
    warmup: Annotated[int, typer.Option(help="Of which untimed.")] = 1,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Where to write the scaled matrix.")
    ] = None,
    as_json: JsonOption = False,
):
    """Derive a scale model of TARGET for the lab: topology, schedule, delays and compute times
    kept; tensors, rates and TCP windows scaled by one factor per profile. Writes the scaled
    matrix."""
    check_option("--iterations", iterations, 2, 1000)
    check_option("--warmup", warmup, 1, iterations - 1)
    if calibrate not in (None, REFERENCE, "flops"):
        raise ConfigError(None, "--calibrate", f"must be {REFERENCE!r} or 'flops'")
    ceiling_bps = (
        None
        if ceiling is None
        else parsed_option("--ceiling", ceiling, parse_rate_bps, *CEILING_BPS)
    )
    latency_s = (
        None
        if lab_latency is None
        else parsed_option("--lab-latency", lab_latency, parse_time_s, *LATENCY_S)
    )
    if lab_receive_share is not None:
        check_option("--lab-receive-share", lab_receive_share, 0.05, 1.0)
    measured = None
    if os.path.isdir(target):
        if calibrate is not None:
            raise ConfigError(str(target), "--calibrate", "a results folder calibrates on its own")
        spec, calibration, measured = _measured_target(target)
    else:
        spec = load_matrix(target)
        calibration = from_flops() if calibrate == "flops" else reference_calibration()
    out = check_target(output or Path(f"{scaled_name(spec.header.name)}.toml"), "-o")
    lab = _lab(to, ceiling_bps, latency_s, lab_receive_share)
    model = derive(spec, calibration, lab, measured)
    data = scaled_matrix(model, spec, calibration, iterations, warmup)
    write_file(out, tomli_w.dumps(data), "-o")
    load_matrix(out)  # what was written reads back as a valid matrix
    summary = {
        "factors": {name: scale.factor for name, scale in model.scales.items()},
        "lab": {
            "latency_s": lab.latency_s,
            "ceiling_bps": lab.ceiling_bps,
            "receive_share": lab.receive_share,
        },
        "written": str(out),
        "groups": model.groups,
    }
    if as_json:
        print_json(summary)
        return
    share = f"{lab.receive_share:.3f}" if lab.receive_share else "as adv_win_scale leaves"
    console.print(
        f"lab: ceiling {lab.ceiling_bps / 1e6:.0f} Mbit/s, one-way {lab.latency_s * 1e3:.3f} ms,"
        f" receive share {share}",
        highlight=False,
    )
    factors = [
        {"profile": name, "s": f"{scale.factor:.4g}", "lab profile": scale.profile.short()}
        for name, scale in model.scales.items()
    ]
    print_table("scale factor per profile", factors, ["profile", "s", "lab profile"])
    rows = [
        {
            "profile": row["profile"],
            "group": row["group"],
            "target": f"{row['target']:.4g}",
            "local": f"{row['local']:.4g}",
            "kept": "yes" if row["kept"] else "no",
        }
        for row in model.groups
    ]
    print_table("dimensionless groups", rows, ["profile", "group", "target", "local", "kept"])
    console.print(f"scaled matrix: {out}; run it with `wanlab run {out}`", highlight=False)


def _measured_target(directory: Path) -> tuple[MatrixSpec, Calibration, Measured]:
    """A results folder as a target: its matrix, the calibration on its baseline cell (the
    scale model's compute and TCP), and each cell's own calibration and measured times."""
    store = ResultsStore(directory)
    if not os.path.isfile(store.cells_path) or not os.path.isfile(directory / "matrix.toml"):
        raise ConfigError(str(directory), None, "is not a results folder (no cells.jsonl and "
                          "matrix.toml)")  # fmt: skip
    spec = load_matrix(directory / "matrix.toml")
    records = store.latest()
    _check_cells_of(spec, records, store.cells_path)
    calibrator = ResultsCalibration(records, source=str(directory))
    baseline = next(c for c in spec.cells() if c.profile == baseline_profile(spec))
    measured = Measured(calibrator.for_cell, measured_cells(records), spec.header.repeats)
    return spec, calibrator.for_cell(baseline.params()), measured


def _check_cells_of(spec: MatrixSpec, records: list[CellRecord], cells_path: Path) -> None:
    """Refuse a results folder whose matrix.toml is not the matrix its cells ran: a cell it
    does not have, or a trainer setting other than the one the cell ran with."""
    cells = {cell.cell_id: cell for cell in spec.cells()}
    for record in records:
        cell = cells.get(record.cell_id)
        if cell is None or record.matrix not in (None, spec.header.name):
            raise ConfigError(
                str(cells_path), f"cell {record.cell_id}",
                f"is not a cell of {spec.source} (matrix {spec.header.name!r}): the folder mixes "
                "the results of another matrix",
            )  # fmt: skip
        config = spec.trainer_config(cell).model_dump(mode="json")
        for key, ran in record.trainer.items():
            if key in config and config[key] != ran:
                raise ConfigError(
                    str(spec.source), f"trainer.{key}",
                    f"is {config[key]!r} here but cell {record.cell_id} ran with {ran!r}: this "
                    "is not the matrix of the folder's cells",
                )  # fmt: skip


def _lab(
    inventory: str, ceiling_bps: float | None, latency_s: float | None, share: float | None
) -> Lab:
    """The lab's figures: as given, else probed on a ring of the inventory's first hosts; and
    whether the inventory's delay node takes its own hop out of the delays it applies."""
    fleet = load_fleet(inventory)
    delays_whole = fleet.delay_node is not None
    if ceiling_bps is not None and latency_s is not None and share is not None:
        return Lab(latency_s, ceiling_bps, share, delays_whole=delays_whole)
    if len(fleet.hosts) < 2:
        raise ConfigError(inventory, None, "probing the lab needs at least 2 hosts")
    probed = fleet.model_copy(update={"hosts": fleet.hosts[:PROBE_HOSTS]})
    with FleetNetem(probed) as netem:
        rows = netem.probe(seconds=PROBE_SECONDS, count=20)
    failed = [row for row in rows if not row.get("ok")]
    if failed:
        raise ConfigError(inventory, None, f"the probe failed: {failed[0].get('error')}")
    if latency_s is None:
        latency_s = statistics.median(row["rtt_ms_median"] for row in rows) / 2000
    if ceiling_bps is None:
        ceiling_bps = min(row["throughput_bps"] for row in rows)
    if share is None:
        share = statistics.median(row["receive_share"] for row in rows)
    mtu = min(row["mss_bytes"] for row in rows) + SEGMENT_HEADER_BYTES
    return Lab(latency_s, ceiling_bps, share, mtu=mtu, delays_whole=delays_whole)
