"""The `wanlab` command: one verb group per package, bad input reported as one line, exit 2."""

from __future__ import annotations

import sys

import typer

from inventory.cli import fleet_app, inventory_app
from inventory.errors import ConfigError

app = typer.Typer(
    help="Measure how distributed training slows down as the network gets worse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(fleet_app, name="fleet")
app.add_typer(inventory_app, name="inventory")


def main() -> None:
    """Entry point of the `wanlab` console command."""
    try:
        app()
    except ConfigError as error:
        print(f"wanlab: error: {error}", file=sys.stderr)
        sys.exit(2)
