"""The `wanlab` command: one verb group per package, bad input reported as one line, exit 2."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from experiments.lab import SHAPING_MODES, lab_down, lab_status, lab_up
from inventory.cli import JsonOption, console, inventory_app, print_table
from inventory.errors import ConfigError
from netem.cli import app as netem_app
from netem.cli import probe

app = typer.Typer(
    help="Measure how distributed training slows down as the network gets worse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
fleet_app = typer.Typer(help="The local fleet: hosts as network namespaces with real sshd.")
app.add_typer(fleet_app, name="fleet")
app.add_typer(inventory_app, name="inventory")
app.add_typer(netem_app, name="netem")
app.command("probe")(probe)


@fleet_app.command("up")
def fleet_up(
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="Number of hosts.")] = 4,
    shaping: Annotated[
        str,
        typer.Option(
            help="Where shaping happens: on each host (`host`), on a user-mode Linux delay "
            "node the hosts' links run through (`delay-node`), or `auto`: the node only "
            "when this kernel has no sch_netem."
        ),
    ] = "auto",
):
    """Create (or repair) the local fleet with exactly HOSTS hosts and write its inventory."""
    if shaping not in SHAPING_MODES:
        raise ConfigError(None, "--shaping", f"must be one of {', '.join(SHAPING_MODES)}")
    path = lab_up(hosts, shaping)
    console.print(f"local fleet up: {hosts} hosts; inventory {path} (use -i local)")


@fleet_app.command("down")
def fleet_down():
    """Remove every namespace, link, process and file of the local fleet (and its node)."""
    lab_down()
    console.print("local fleet down")


@fleet_app.command("status")
def fleet_status(as_json: JsonOption = False):
    """Show the local fleet's hosts, their sshd and whether SSH answers."""
    status = lab_status()
    if as_json:
        print(json.dumps(status, indent=2))
        return
    columns = ["name", "address", "netns", "netns_exists", "sshd_pid", "ssh_port_open"]
    node = f", delay node PID {status['delay_node_pid']}" if status["delay_node_pid"] else ""
    print_table(f"local fleet ({status['topology']}{node})", status["hosts"], columns)


def main() -> None:
    """Entry point of the `wanlab` console command."""
    try:
        app()
    except ConfigError as error:
        print(f"wanlab: error: {error}", file=sys.stderr)
        sys.exit(2)
