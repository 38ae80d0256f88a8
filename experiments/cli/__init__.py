"""The `wanlab` command: one verb group per package, bad input reported as one line, exit 2."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from experiments.cli.inventory import (
    JsonOption,
    console,
    deploy,
    inventory_app,
    node_kernel_line,
    print_json,
    print_table,
)
from experiments.cli.netem import app as netem_app
from experiments.cli.netem import probe
from experiments.cli.predict import predict
from experiments.cli.report import report
from experiments.cli.scale import scale
from experiments.lab import SHAPING_MODES, kernelfetch, lab_down, lab_status, lab_up
from experiments.lab.demo import default_results_dir, run_demo
from experiments.lab.kernel import KernelError
from experiments.lab.node import DelayNodeError
from experiments.matrix import MatrixSpec, load_matrix
from experiments.plan import plan_rows, tc_preview
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner
from inventory.errors import ConfigError, HostsUnreachable
from inventory.loader import LOCAL, load_inventory
from inventory.models import Fleet

try:  # typer 0.2x carries its own copy of click; older typer uses click itself
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError

UNUSABLE_PATH = (errno.ENAMETOOLONG, errno.ELOOP)
"""OS errors that say a path given is bad input (a name too long, a loop of links)."""

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
app.command("deploy")(deploy)
app.command("predict")(predict)
app.command("report")(report)
app.command("scale")(scale)


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
    """Show the local fleet's hosts, their sshd, whether SSH answers, and the node's kernel."""
    status = lab_status()
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
    record = kernelfetch.provision(refresh=refresh)
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


@app.command("run")
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
    fleet = load_inventory(resolve_inventory(inventory, spec))
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


@app.command("demo")
def demo(
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Results folder; default results/demo-TIME.")
    ] = None,
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="Local hosts.")] = 4,
    shaping: Annotated[str, typer.Option(help="auto, host or delay-node.")] = "auto",
    keep_fleet: Annotated[bool, typer.Option(help="Leave the local fleet up afterwards.")] = False,
):
    """The main job: local fleet up, the local demo matrix, its report, fleet down."""
    if shaping not in SHAPING_MODES:
        raise ConfigError(None, "--shaping", f"must be one of {', '.join(SHAPING_MODES)}")
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


def resolve_inventory(option: str | None, spec: MatrixSpec) -> str:
    """The -i option, else the matrix's inventory (a path relative to the matrix file)."""
    chosen = option or spec.header.inventory
    if chosen == LOCAL or option is not None:
        return chosen
    return str(spec.source.parent / chosen)


def print_plan(spec: MatrixSpec, fleet: Fleet) -> None:
    """The cells, where their ranks go, and the tc commands of every profile."""
    rows = plan_rows(spec, fleet)
    print_table(f"plan: {spec.header.name} on {fleet.name}", rows, list(rows[0]))
    for profile, per_host in tc_preview(spec, fleet).items():
        console.print(f"[bold]{escape(profile)}[/bold]", markup=True)
        for host, commands in per_host.items():
            for command in commands:
                console.print(f"  {host}: {command}", soft_wrap=True, highlight=False)


def main() -> None:
    """Entry point of the `wanlab` console command: bad input is one line and exit code 2,
    hosts out of reach one line per host and exit code 1; never a traceback for either."""
    try:
        code = app(standalone_mode=False)
    except UsageError as error:  # a bad option or argument, as the command line gave it
        if not error.format_message():  # no command at all: the help says what there is
            error.show()
        else:
            print(f"wanlab: error: {error.format_message()}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except (ConfigError, KernelError) as error:
        print(f"wanlab: error: {error}", file=sys.stderr)
        sys.exit(2)
    except DelayNodeError as error:
        print(f"wanlab: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except HostsUnreachable as error:
        print(f"wanlab: error: {error.what} on {len(error.reasons)} host(s):", file=sys.stderr)
        for name, reason in sorted(error.reasons.items()):
            print(f"  {name}: {' '.join(reason.split())}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # a path given that the system cannot take, wherever it was used
        if error.errno not in UNUSABLE_PATH or error.filename is None:
            raise
        print(f"wanlab: error: {error.filename}: {error.strerror}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
