"""`wanlab fleet up|down|status|kernel`: the local lab."""

from __future__ import annotations

from typing import Annotated

import typer

from experiments import lab
from experiments.cli.common import JsonOption, console, print_json, print_table
from experiments.cli.inventory import node_kernel_line

fleet_app = typer.Typer(help="The local fleet: hosts as network namespaces with real sshd.")


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
    path = lab.up(hosts, shaping)
    console.print(f"local fleet up: {hosts} hosts; inventory {path} (use -i local)")


@fleet_app.command("down")
def fleet_down():
    """Remove every namespace, link, process and file of the local fleet (and its node)."""
    lab.down()
    console.print("local fleet down")


@fleet_app.command("status")
def fleet_status(as_json: JsonOption = False):
    """Show the local fleet's hosts, their sshd, whether SSH answers, and the node's kernel."""
    status = lab.status()
    if as_json:
        print_json(status)
        return
    columns = ["name", "address", "netns", "netns_exists", "sshd_pid", "ssh_port_open"]
    node = f", delay node PID {status['delay_node_pid']}" if status["delay_node_pid"] else ""
    print_table(f"local fleet ({status['topology']}{node})", status["hosts"], columns)
    line = node_kernel_line(status["node_kernel"])
    console.print(f"delay node kernel: {line}", highlight=False)


@fleet_app.command("kernel")
def fleet_kernel(
    refresh: Annotated[
        bool, typer.Option(help="Fetch the newer kernel again even if one is in place.")
    ] = False,
    as_json: JsonOption = False,
):
    """Make sure the lab has a user-mode Linux kernel that boots on this CPU: fetch the newer
    one into wanlab's own folder, probe-boot every candidate, record the choice."""
    record = lab.provision_kernel(refresh=refresh)
    if as_json:
        print_json(record)
        return
    print_table(
        "user-mode Linux kernels probed here",
        record["probes"],
        ["package", "booted", "version", "seconds", "detail"],
    )
    console.print(f"the lab boots {record['kernel']['binary']}", highlight=False)
    console.print(f"why: {record['reason']}", highlight=False)
