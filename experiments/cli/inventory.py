"""`wanlab inventory show|check` and `wanlab deploy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments import lab
from experiments.cli.common import (
    InventoryOption,
    JsonOption,
    console,
    load_fleet,
    print_json,
    print_table,
)
from inventory.ansible import ALL
from inventory.ansible import order_statement as ansible_order
from inventory.check import check_fleet
from inventory.deploy import deploy as deploy_hosts
from inventory.deploy import with_environments
from inventory.errors import ConfigError, HostsUnreachable, check_option
from inventory.freeze import write_fleet
from inventory.fromsource import SourceOptions, read_source
from inventory.loader import ANSIBLE_PREFIX, is_ansible_spec
from inventory.models import Fleet
from inventory.safewrite import check_target
from netem.fleet import FleetNetem

inventory_app = typer.Typer(help="Read and check a fleet inventory.")

TCP_COLUMNS = {
    "congestion_control": "cc",
    "available_congestion_control": "available",
    "allowed_congestion_control": "allowed",
    "rmem": "rmem",
    "wmem": "wmem",
    "adv_win_scale": "adv_win_scale",
    "slow_start_after_idle": "slow_start_after_idle",
    "initcwnd": "initcwnd",
}


def tcp_row(report: dict) -> dict:
    """A host's TCP settings as one table row (lists as space-separated words)."""
    row = {
        TCP_COLUMNS.get(k, k): v
        for k, v in report["tcp"].items()
        if k in TCP_COLUMNS or k == "error"
    }
    return {"name": report["name"]} | {
        k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()
    }


GPU_COLUMNS = ["name", "gpus", "model", "memory_mib", "driver", "cuda", "torch_cuda", "nccl"]


def gpu_row(report: dict) -> dict:
    """A host's GPUs as one table row: how many, and the first one's model and memory (a host
    of mixed GPUs lists each model once); why there are none where there are none."""
    facts = report["gpu"]
    gpus = facts.get("gpus", [])
    row = {"name": report["name"], "gpus": facts["count"], "model": facts.get("why")}
    if gpus:
        models = sorted({gpu["model"] for gpu in gpus})
        row |= {"model": ", ".join(models), "memory_mib": gpus[0]["memory_mib"],
                "driver": gpus[0]["driver"]}  # fmt: skip
    return row | {key: facts.get(key) for key in ("cuda", "torch_cuda", "nccl")}


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
    if write is not None:
        check_target(write, "--write")
    if source is None:
        if file is not None or name is not None:
            which = "FILE" if file is not None else "--name"
            raise ConfigError(None, which, "only with --from (-i names the inventory)")
        fleet = load_fleet(inventory, check_keys=False)
    else:
        options = SourceOptions(name, group, hosts, tag or [], instance_type, region, public,
                                order_tag, user, key_file)  # fmt: skip
        fleet = read_source(source, file, options)
    if write is not None:
        write_fleet(fleet, write, "--write")
    if as_json:
        print_json(fleet.model_dump(mode="json"))
        return
    rows = [
        {**host.model_dump(), "labels": ", ".join(f"{k}={v}" for k, v in host.labels.items()),
         "jump": host.jump and f"{host.jump.user}@{host.jump.address}:{host.jump.port}"}
        for host in fleet.hosts
    ]  # fmt: skip
    columns = ["name", "address", "user", "port", "jump", "interface", "python", "labels"]
    print_table(f"{fleet.name} ({fleet.source or source})", rows, columns)
    statement = order_statement(source, file, inventory, group)
    if statement:
        console.print(statement, highlight=False, soft_wrap=True)
    if write is not None:
        console.print(f"written: {write}", highlight=False, soft_wrap=True)


def order_statement(
    source: str | None, file: Path | None, inventory: str | None, group: str | None
) -> str | None:
    """Which order the hosts come in (ranks follow it), where the source has its own."""
    if source == "ansible" and file is not None:
        return ansible_order(file, group or ALL)
    if inventory is not None and is_ansible_spec(inventory):
        return ansible_order(Path(inventory.removeprefix(ANSIBLE_PREFIX)))
    if source == "ssh-config":
        return (
            "host order: the order the Host lines name them, Included files in place "
            "(ssh itself has no list of hosts)"
        )
    return None


@inventory_app.command("check")
def inventory_check(
    inventory: InventoryOption,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option(help="Seconds each host may take.")] = 20.0,
):
    """SSH into every host in parallel: reachability, round trip, versions, qdisc support, the
    TCP settings and the GPUs."""
    check_option("--timeout", timeout, 0, 3600, low_open=True)
    fleet = load_fleet(inventory)
    reports = check_fleet(fleet, timeout=timeout, node_kernel=lab.node_kernel(fleet))
    for report, tcp in zip(reports, tcp_facts(fleet, reports, timeout), strict=True):
        if tcp is not None:
            report["tcp"] = tcp
    if as_json:
        print_json(reports)
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
        unread = (
            ["error"]
            if any("error" in report["tcp"] for report in reports if "tcp" in report)
            else []
        )
        print_table("TCP settings", tcp_rows, ["name", *TCP_COLUMNS.values(), *unread])
        gpu_rows = [gpu_row(report) for report in reports if "gpu" in report]
        print_table("GPUs", gpu_rows, GPU_COLUMNS)
        node_kernel = reports[0].get("node_kernel") if reports else None
        if node_kernel is not None:
            console.print(f"delay node kernel: {node_kernel_line(node_kernel)}", highlight=False)
    if not all(report["reachable"] for report in reports):
        raise typer.Exit(1)


def tcp_facts(fleet: Fleet, reports: list[dict], timeout: float) -> list[dict | None]:
    """Each host's TCP settings as its agent reads them (netem.tcp), in fleet order: why not
    (`{"error": …}`) where the agent cannot run (no pyroute2: wanlab is not deployed there),
    None for a host out of reach."""
    reachable = {r["name"]: r for r in reports if r["reachable"]}
    why = {n: NOT_DEPLOYED for n, r in reachable.items() if not r.get("pyroute2")}
    names = [name for name in reachable if name not in why]
    facts: dict[str, dict] = {}
    while names:
        some = fleet.model_copy(update={"hosts": [fleet.host(name) for name in names]})
        try:
            with FleetNetem(some, timeout_s=timeout) as netem:
                facts = netem.tcp_facts()
            break
        except HostsUnreachable as error:  # an agent that did not start: ask the others again
            failed = set(error.reasons) & set(names) or set(names)
            why |= {name: f"{error.what}: {error.reasons.get(name, '')}" for name in failed}
            names = [name for name in names if name not in failed]
    return [
        facts.get(h.name) or {"error": why[h.name]} if h.name in reachable else None
        for h in fleet.hosts
    ]


NOT_DEPLOYED = "needs wanlab deployed (`wanlab deploy`): the host has no pyroute2"
DEPLOY_COLUMNS = ["name", "status", "installed", "reused", "torch", "python", "why"]


def deploy_row(name: str, report: dict) -> dict:
    """A host's deploy report as one table row."""
    versions = report.get("versions") or {}
    return {
        "name": name,
        "status": report["status"],
        "installed": " ".join(report.get("installed", [])),
        "reused": " ".join(report.get("reused", [])),
        "torch": versions.get("torch"),
        "python": report.get("python"),
        "why": report.get("why"),
    }


def deploy(
    inventory: InventoryOption,
    with_torch: Annotated[
        bool,
        typer.Option("--with-torch", help="Install this machine's torch where a host has none."),
    ] = False,
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Write the inventory with each host's new python here."),
    ] = None,
    as_json: JsonOption = False,
):
    """Install wanlab and its host-side requirements into WORKDIR/env on every host, in
    parallel, from a wheelhouse made here (hosts need no package registry); a torch already on
    a host is reused; a host already at this version is skipped. `-i local` points the local
    fleet's hosts at their environments."""
    if write is not None:
        check_target(write, "--write")
    fleet = load_fleet(inventory)
    reports = deploy_hosts(fleet, with_torch)
    if str(inventory) == lab.LOCAL:
        lab.refresh_inventory()
    if write is not None:
        write_fleet(with_environments(fleet, reports), write, "--write")
    if as_json:
        print_json(reports)
    else:
        print_table("deploy", [deploy_row(n, r) for n, r in reports.items()], DEPLOY_COLUMNS)
    if any(report["status"] == "failed" for report in reports.values()):
        raise typer.Exit(1)
