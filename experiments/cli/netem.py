"""`wanlab netem apply|show|reset` (the `app`) and `wanlab probe`.

Bad input raises inventory.errors.ConfigError (the wanlab CLI prints it and exits 2); a host
that fails makes the command exit 1 after every host's answer is printed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from experiments.cli.common import InventoryOption, JsonOption, console, load_fleet, print_json
from inventory.errors import check_option
from netem.agent import DEFAULT_LEASE_S
from netem.fleet import FleetNetem, load_target
from netem.fleet import dry_run as dry_run_commands
from netem.units import format_rate

app = typer.Typer(help="Shape the fleet's network: apply a profile or pair matrix, show, reset.")
MAX_LEASE_S = 7 * 24 * 3600.0


def _report(title: str, answers: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(answers)
    else:
        table = Table(title=title)
        for column in ("host", "ok", "interface", "result", "shaping", "error"):
            table.add_column(column)
        for name, answer in answers.items():
            shaping = answer.get("shaping")
            if isinstance(shaping, dict):
                shaping = shaping.get("profile") or json.dumps(shaping.get("routes"))
            cells = [name, answer.get("ok"), answer.get("interface")]
            cells += [answer.get("result", answer.get("commands")), shaping, answer.get("error")]
            table.add_row(*("" if cell is None else str(cell) for cell in cells))
        console.print(table)
    if not all(answer.get("ok") for answer in answers.values()):
        raise typer.Exit(1)


@app.command("apply")
def apply(
    target: Annotated[
        str, typer.Argument(help="Built-in name, short form like 10ms/1gbit, or a TOML file.")
    ],
    inventory: InventoryOption,
    lease: Annotated[
        float, typer.Option(help="Seconds until the hosts revert unless renewed; 0 = never.")
    ] = DEFAULT_LEASE_S,
    ssh_exempt: Annotated[
        bool, typer.Option("--ssh-exempt/--no-ssh-exempt", help="Keep SSH unshaped.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the equivalent tc commands; touch nothing.")
    ] = False,
    as_json: JsonOption = False,
):
    """Shape every host, read the kernel's tree back and compare it with what was asked."""
    check_option("--lease", lease, 0, MAX_LEASE_S)
    chosen = load_target(target)
    fleet = load_fleet(inventory)
    if dry_run:
        answers = dry_run_commands(fleet, chosen, ssh_exempt)
        if as_json:
            print_json(answers)
        for name, answer in answers.items() if not as_json else ():
            console.print(f"# {name}" + (": reset (nothing to shape)" if answer["reset"] else ""))
            for line in answer["commands"]:
                print(line)
        return
    with FleetNetem(fleet) as netem:
        answers = netem.apply(chosen, lease_s=lease, exempt_ssh=ssh_exempt)
    _report(f"netem apply {target}", answers, as_json)


@app.command("show")
def show(inventory: InventoryOption, as_json: JsonOption = False):
    """What every host's kernel holds now, as a profile or per-destination routes."""
    with FleetNetem(load_fleet(inventory)) as netem:
        _report("netem show", netem.show(), as_json)


@app.command("reset")
def reset(inventory: InventoryOption, as_json: JsonOption = False):
    """Put every host's interface back as it was before wanlab; safe to run twice."""
    with FleetNetem(load_fleet(inventory)) as netem:
        _report("netem reset", netem.reset(force=True), as_json)


def probe(
    inventory: InventoryOption,
    all_pairs: Annotated[
        bool, typer.Option("--all-pairs", help="Every ordered pair, not just a ring.")
    ] = False,
    seconds: Annotated[float, typer.Option(help="Bulk transfer seconds per pair.")] = 3.0,
    count: Annotated[int, typer.Option(help="TCP round trips per pair.")] = 50,
    as_json: JsonOption = False,
):
    """Measure RTT (median of many TCP round trips), bulk throughput and the receiver's receive
    share (the window its kernel offers per byte of receive buffer) between host pairs."""
    check_option("--seconds", seconds, 0, 600)
    check_option("--count", count, 1, 100_000)
    fleet = load_fleet(inventory)
    names = [host.name for host in fleet.hosts]
    pairs = [(a, b) for a in names for b in names if a != b] if all_pairs else None
    with FleetNetem(fleet) as netem:
        rows = netem.probe(pairs=pairs, seconds=seconds, count=count)
    if as_json:
        print_json(rows)
    else:
        table = Table(title="probe")
        for column in ("src", "dst", "rtt ms (median)", "throughput", "receive share", "error"):
            table.add_column(column)
        for row in rows:
            rtt = row.get("rtt_ms_median")
            bps = row.get("throughput_bps")
            share = row.get("receive_share")
            table.add_row(
                row["src"],
                row["dst"],
                "" if rtt is None else f"{rtt:.3f}",
                "" if bps is None else format_rate(int(bps // 10**6) * 10**6),
                "" if share is None else f"{share:.2f}",
                row.get("error") or "",
            )
        console.print(table)
    if not all(row.get("ok") for row in rows):
        raise typer.Exit(1)
