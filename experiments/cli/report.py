"""`wanlab report RESULTS` and `wanlab report --compare A B`: tables, figures and a page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import console
from experiments.report.write import FORMATS, parse_formats, write_comparison, write_report
from inventory.errors import ConfigError
from inventory.names import check_name


def report(
    results: Annotated[
        Path | None, typer.Argument(help="Results folder (written by `wanlab run -o`).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Where to write the report; default RESULTS/report."),
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", help=f"Comma-separated, any of {','.join(FORMATS)}.")
    ] = ",".join(FORMATS),
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            "--compare",
            help="Two results folders A B to show side by side with B/A ratios.",
            metavar="A B",
        ),
    ] = None,
):
    """Write a run's report (tables, plots, one offline HTML page), or compare two runs."""
    chosen = parse_formats(formats)
    if compare is not None and results is not None:
        raise ConfigError(str(results), "RESULTS", "give either RESULTS or --compare A B")
    if compare is not None:
        a, b = compare
        written = write_comparison(a, b, out or a / f"compare-{_folder_name(b)}", chosen)
    elif results is not None:
        written = write_report(results, out or results / "report", chosen)
    else:
        raise ConfigError(None, "RESULTS", "give a results folder, or --compare A B")
    for kind, path in written.items():
        console.print(f"{kind:28} {path}", highlight=False)


def _folder_name(folder: Path) -> str:
    """A results folder's own name, for the folder named after it (a name by the one rule)."""
    try:
        return check_name(folder.resolve().name)
    except ValueError as error:
        why = f"its folder's name {error} (or give -o)"
        raise ConfigError(str(folder), "--compare", why) from None
