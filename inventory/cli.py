"""CLI verbs of the inventory package: `wanlab inventory show|check`, and shared options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from inventory.check import check_fleet
from inventory.errors import ConfigError, check_option
from inventory.freeze import write_fleet
from inventory.fromsource import SourceOptions, read_source
from inventory.loader import load_inventory

inventory_app = typer.Typer(help="Read and check a fleet inventory.")
console = Console(markup=False)  # user text (names, labels, paths) is never markup

InventoryOption = Annotated[
    str,
    typer.Option(
        "-i",
        "--inventory",
        help="Inventory file (TOML; Ansible as ansible:FILE or *.yml/*.yaml/*.ini), or 'local'.",
    ),
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
def inventory_show(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="The source's file: ansible's inventory, ssh-config's (~/.ssh/config)."
        ),
    ] = None,
    inventory: Annotated[
        str | None,
        typer.Option("-i", "--inventory", help="Inventory file (TOML or Ansible), or 'local'."),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="Read another source: ansible, ssh-config, ec2.")
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Also write the fleet as a TOML inventory.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The fleet's name (--from).")] = None,
    group: Annotated[str | None, typer.Option(help="ansible: the group (default all).")] = None,
    hosts: Annotated[
        str | None, typer.Option(help="ssh-config: aliases matching, e.g. 'gpu-*'.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="ec2: Key=Value, repeatable.")] = None,
    instance_type: Annotated[str | None, typer.Option("--type", help="ec2: instance type.")] = None,
    region: Annotated[str | None, typer.Option(help="ec2: region.")] = None,
    public: Annotated[bool, typer.Option(help="ec2: public addresses, not private.")] = False,
    order_tag: Annotated[str | None, typer.Option(help="ec2: tag that orders the hosts.")] = None,
    user: Annotated[str | None, typer.Option(help="ec2: the hosts' login (default root).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="ec2: the hosts' private key.")] = None,
    as_json: JsonOption = False,
):
    """Print the hosts of an inventory (-i) or another source (--from) as read and validated;
    --write freezes them into a TOML inventory."""
    if (inventory is None) == (source is None):
        raise ConfigError(None, "-i/--from", "give exactly one of -i INVENTORY and --from SOURCE")
    if source is None:
        if file is not None or name is not None:
            which = "FILE" if file is not None else "--name"
            raise ConfigError(None, which, "only with --from (-i names the inventory)")
        fleet = load_inventory(inventory, check_keys=False)
    else:
        options = SourceOptions(name, group, hosts, tag or [], instance_type, region, public,
                                order_tag, user, key_file)  # fmt: skip
        fleet = read_source(source, file, options)
    if write is not None:
        write_fleet(fleet, write)
    if as_json:
        print(fleet.model_dump_json(indent=2))
        return
    rows = [
        {**host.model_dump(), "labels": ", ".join(f"{k}={v}" for k, v in host.labels.items()),
         "jump": host.jump and f"{host.jump.user}@{host.jump.address}:{host.jump.port}"}
        for host in fleet.hosts
    ]  # fmt: skip
    columns = ["name", "address", "user", "port", "jump", "interface", "python", "labels"]
    print_table(f"{fleet.name} ({fleet.source or source})", rows, columns)
    if write is not None:
        console.print(f"written: {write}", highlight=False, soft_wrap=True)


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
