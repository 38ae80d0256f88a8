"""`wanlab scale TARGET --to local`: write the scale model of a matrix for the local lab."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from experiments.costmodel.calibrate import from_flops, reference_calibration
from experiments.matrix import load_matrix
from experiments.scale import Lab, derive, scaled_matrix
from inventory.cli import JsonOption, console, print_table
from inventory.errors import ConfigError, check_option
from inventory.loader import LOCAL, load_inventory
from netem.fleet import FleetNetem
from netem.units import parse_rate_bps, parse_time_ms

REFERENCE = "reference"
PROBE_SECONDS = 2.0
PROBE_HOSTS = 4
"""The lab's figures come from a ring of its first hosts (every hop of the lab is alike)."""


def scale(
    target: Annotated[Path, typer.Argument(help="The matrix to model (TOML).")],
    to: Annotated[
        str, typer.Option(help="The lab's inventory: its hosts are probed for the figures below.")
    ] = LOCAL,
    calibrate: Annotated[
        str,
        typer.Option(
            help=f"`{REFERENCE}`: the target's compute and TCP from the reference experiment; "
            "`flops`: compute from model FLOPs (a V100-class fp32 rate)."
        ),
    ] = REFERENCE,
    ceiling: Annotated[
        str | None,
        typer.Option(help="The most the lab forwards (e.g. 500mbit); default: probed on --to."),
    ] = None,
    lab_latency: Annotated[
        str | None,
        typer.Option(help="One-way latency of the lab's unshaped hop; default: probed on --to."),
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
    kept; tensors, rates and TCP windows scaled by one factor. Writes the scaled matrix."""
    check_option("--iterations", iterations, 2, 1000)
    check_option("--warmup", warmup, 1, iterations - 1)
    if calibrate not in (REFERENCE, "flops"):
        raise ConfigError(None, "--calibrate", f"must be {REFERENCE!r} or 'flops'")
    spec = load_matrix(target)
    calibration = reference_calibration() if calibrate == REFERENCE else from_flops()
    if lab_receive_share is not None:
        check_option("--lab-receive-share", lab_receive_share, 0.05, 1.0)
    lab = _lab(to, ceiling, lab_latency, lab_receive_share)
    model = derive(spec, calibration, lab)
    out = output or Path(f"{spec.header.name}-scale.toml")
    data = scaled_matrix(model, spec, calibration, iterations, warmup)
    try:
        out.write_text(tomli_w.dumps(data))
    except OSError as error:
        raise ConfigError(str(out), None, f"cannot be written: {error.strerror}") from None
    load_matrix(out)  # what was written reads back as a valid matrix
    summary = {
        "factor": model.factor,
        "lab": {
            "latency_s": lab.latency_s,
            "ceiling_bps": lab.ceiling_bps,
            "receive_share": lab.receive_share,
        },
        "written": str(out),
        "groups": model.groups,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    share = f"{lab.receive_share:.3f}" if lab.receive_share else "as adv_win_scale leaves"
    console.print(
        f"scale factor s = {model.factor:.3g} (lab: ceiling {lab.ceiling_bps / 1e6:.0f} Mbit/s, "
        f"one-way {lab.latency_s * 1e3:.3f} ms, receive share {share})",
        highlight=False,
    )
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


def _lab(inventory: str, ceiling: str | None, latency: str | None, share: float | None) -> Lab:
    """The lab's figures: as given, else probed on a ring of the inventory's first hosts."""
    try:
        ceiling_bps = parse_rate_bps(ceiling) if ceiling is not None else None
        latency_s = parse_time_ms(latency) / 1000 if latency is not None else None
    except ValueError as error:
        raise ConfigError(None, "--ceiling/--lab-latency", str(error)) from None
    if ceiling_bps is not None and latency_s is not None and share is not None:
        return Lab(latency_s, ceiling_bps, share)
    fleet = load_inventory(inventory)
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
    return Lab(latency_s, ceiling_bps, share)
