"""CLI verbs of the inventory package: `wanlab inventory show|check`, and shared options."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from inventory.check import check_fleet
from inventory.errors import check_option
from inventory.loader import load_inventory

inventory_app = typer.Typer(help="Read and check a fleet inventory.")
console = Console(markup=False)  # user text (names, labels, paths) is never markup

InventoryOption = Annotated[
    str, typer.Option("-i", "--inventory", help="Inventory file, or 'local' for the local fleet.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows of dicts as a rich table with the given columns."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


TCP_COLUMNS = {
    "congestion_control": "cc",
    "available_congestion_control": "available",
    "rmem": "rmem",
    "wmem": "wmem",
    "adv_win_scale": "adv_win_scale",
    "slow_start_after_idle": "slow_start_after_idle",
    "initcwnd": "initcwnd",
}


def tcp_row(report: dict) -> dict:
    """A host's TCP settings as one table row (lists as space-separated words)."""
    row = {TCP_COLUMNS[k]: v for k, v in report["tcp"].items() if k in TCP_COLUMNS}
    return {"name": report["name"]} | {
        k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()
    }


def node_kernel_line(description: dict) -> str:
    """One line for the delay node's kernel: which, its version, and why it was chosen."""
    if not description.get("kernel"):
        return description.get("reason", "unknown")
    return f"{description['kernel']}, release {description['version']}: {description['reason']}"


@inventory_app.command("show")
def inventory_show(inventory: InventoryOption, as_json: JsonOption = False):
    """Print the hosts of an inventory as read and validated."""
    fleet = load_inventory(inventory, check_keys=False)
    if as_json:
        print(fleet.model_dump_json(indent=2))
        return
    rows = [
        {**host.model_dump(), "labels": ", ".join(f"{k}={v}" for k, v in host.labels.items())}
        for host in fleet.hosts
    ]
    columns = ["name", "address", "user", "port", "interface", "python", "labels"]
    print_table(f"{fleet.name} ({fleet.source})", rows, columns)


@inventory_app.command("check")
def inventory_check(
    inventory: InventoryOption,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option(help="Seconds each host may take.")] = 20.0,
):
    """SSH into every host in parallel: reachability, round trip, versions, qdisc support, and
    the TCP settings."""
    check_option("--timeout", timeout, 0, 3600, low_open=True)
    reports = check_fleet(load_inventory(inventory), timeout=timeout)
    if as_json:
        print(json.dumps(reports, indent=2))
    else:
        columns = [
            "name",
            "address",
            "reachable",
            "ssh_rtt_ms",
            "kernel",
            "python",
            "torch",
            "interface",
            "shaped_on",
            "netem",
            "htb",
            "tbf",
            "error",
        ]
        print_table("inventory check", reports, columns)
        tcp_rows = [tcp_row(report) for report in reports if "tcp" in report]
        print_table("TCP settings", tcp_rows, ["name", *TCP_COLUMNS.values()])
        node_kernel = reports[0].get("node_kernel") if reports else None
        if node_kernel is not None:
            console.print(f"delay node kernel: {node_kernel_line(node_kernel)}", highlight=False)
    if not all(report["reachable"] for report in reports):
        raise typer.Exit(1)
