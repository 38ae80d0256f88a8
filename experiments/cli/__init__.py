"""The `wanlab` command: one module per verb group, bad input reported as one line, exit 2.

common.py holds what the verbs share (the console, tables, `-i`: the one place `local` is read);
fleet.py the local lab; inventory.py `inventory` and `deploy`; netem.py `netem` and `probe`;
run.py `run` and `demo`; predict.py, report.py and scale.py their verbs.
"""

from __future__ import annotations

import errno
import inspect
import sys

import typer

from experiments.cli import inventory, netem, predict, report, run, scale
from experiments.cli.fleet import fleet_app
from experiments.lab.kernel import KernelError
from experiments.lab.node import DelayNodeError
from inventory.errors import ConfigError, HostsUnreachable

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
app.add_typer(fleet_app, name="fleet")
app.add_typer(inventory.inventory_app, name="inventory")
app.add_typer(netem.app, name="netem")
app.command("probe")(netem.probe)
app.command("deploy")(inventory.deploy)
app.command("predict")(predict.predict)
app.command("report")(report.report)
app.command("scale")(scale.scale)
app.command("run")(run.run)
app.command("demo")(run.demo)


def summarize_commands(typer_app: typer.Typer) -> None:
    """Give every command of `typer_app` (and of its groups) the first paragraph of its
    docstring, on one line, as its summary: the Commands panel of the help keeps the source's
    line breaks, which break its sentences in an 80-column terminal."""
    for command in typer_app.registered_commands:
        if command.short_help is None:
            text = command.help or inspect.getdoc(command.callback) or ""
            command.short_help = " ".join(text.split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        summarize_commands(group.typer_instance)


summarize_commands(app)


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
