"""What every verb of the `wanlab` command shares: the console, tables and JSON, the `-i` and
`--json` options, and reading `-i` (the one place `local` means the local lab's fleet)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from experiments import lab
from experiments.matrix import MatrixSpec
from inventory.loader import load_inventory
from inventory.models import Fleet

console = Console(markup=False)  # user text (names, labels, paths) is never markup
notes = Console(markup=False, stderr=True)
"""Where a command given --json says what is not its JSON."""

REFERENCE = "reference"
"""What `--calibrate` says for the reference experiment (experiments/costmodel/reference.toml)."""

InventoryOption = Annotated[
    str,
    typer.Option(
        "-i",
        "--inventory",
        help="Inventory file (TOML; Ansible as ansible:FILE or *.yml/*.yaml/*.ini), or 'local'.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document instead of tables (other lines: stderr)."),
]


def load_fleet(spec: str | Path, check_keys: bool = True) -> Fleet:
    """The fleet an `-i` names: an inventory file (inventory.loader), or the local lab's
    fleet for `local` (ConfigError when it is not up)."""
    path = lab.inventory_path() if str(spec) == lab.LOCAL else spec
    return load_inventory(path, check_keys=check_keys)


def matrix_inventory(spec: MatrixSpec) -> str:
    """The inventory a matrix names, as `-i` would say it: `local`, or its file (a path
    relative to the matrix file)."""
    chosen = spec.header.inventory
    return chosen if chosen == lab.LOCAL else str(spec.source.parent / chosen)


def print_json(value: Any) -> None:
    """What a `--json` option prints: exactly one JSON document on stdout. A number JSON cannot
    hold (NaN, infinity) is null."""
    print(json.dumps(_json_numbers(value), indent=2, allow_nan=False, default=str))


def _json_numbers(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_numbers(item) for item in value]
    return value


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows of dicts as a rich table with the given columns."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)
