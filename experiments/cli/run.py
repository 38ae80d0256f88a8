"""`wanlab run MATRIX` (and its `--dry-run` plan) and `wanlab demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from experiments.cli.common import console, load_fleet, matrix_inventory, print_table
from experiments.lab.demo import default_results_dir, run_demo
from experiments.matrix import MatrixSpec, load_matrix
from experiments.plan import plan_rows, tc_preview
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner
from inventory.models import Fleet


def run(
    matrix: Annotated[Path, typer.Argument(help="Matrix spec (TOML).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Results folder.")],
    inventory: Annotated[
        str | None,
        typer.Option(
            "-i", "--inventory", help="Inventory file or 'local'; default: the matrix's own."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip cells already done in OUT.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
):
    """Run every cell of MATRIX on the fleet: shape, verify, probe, train, collect, reset."""
    spec = load_matrix(matrix)
    fleet = load_fleet(inventory or matrix_inventory(spec))
    runner = MatrixRunner(spec, fleet, ResultsStore(out), console)
    runner.check_inputs(resume)
    if dry_run:
        print_plan(spec, fleet)
        return
    outcome = runner.run(resume=resume)
    console.print(
        f"{len(outcome.ran)} cell(s) run, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} already done; results in {out}/cells.jsonl"
    )
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def demo(
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Results folder; default results/demo-TIME.")
    ] = None,
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="Local hosts.")] = 4,
    shaping: Annotated[str, typer.Option(help="auto, host or delay-node.")] = "auto",
    keep_fleet: Annotated[bool, typer.Option(help="Leave the local fleet up afterwards.")] = False,
):
    """The main job: local fleet up, the local demo matrix, its report, fleet down."""
    out = out or default_results_dir()
    outcome, written = run_demo(out, console, hosts, shaping, keep_fleet)
    console.print(f"{len(outcome.ran)} cell(s) run, {len(outcome.failed)} failed")
    console.print(f"results: {out / 'cells.jsonl'}")
    for kind in ("md", "html"):
        if kind in written:
            console.print(f"report ({kind}): {written[kind]}")
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def print_plan(spec: MatrixSpec, fleet: Fleet) -> None:
    """The cells, where their ranks go, and the tc commands of every profile."""
    rows = plan_rows(spec, fleet)
    print_table(f"plan: {spec.header.name} on {fleet.name}", rows, list(rows[0]))
    for profile, per_host in tc_preview(spec, fleet).items():
        console.print(f"[bold]{escape(profile)}[/bold]", markup=True)
        for host, commands in per_host.items():
            for command in commands:
                console.print(f"  {host}: {command}", soft_wrap=True, highlight=False)
