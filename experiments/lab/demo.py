"""`wanlab demo`: the main job on the embedded default, end to end.

Bring up the local fleet (with a delay node when this kernel has no netem, so delay profiles are
real), run `matrices/local-demo.toml` on it, write the report, and tear everything down.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console

from experiments.lab import check_shaping, down, up
from experiments.lab.fleet import LocalFleet
from experiments.matrix import load_matrix
from experiments.report.write import write_report
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner, RunOutcome, interrupts_held
from inventory.loader import load_inventory

DEMO_MATRIX = Path(__file__).parents[1] / "matrices" / "local-demo.toml"


def default_results_dir() -> Path:
    """`results/demo-<UTC time>` under the current folder."""
    return Path("results") / datetime.now().strftime("demo-%Y%m%d-%H%M%S")


def run_demo(
    out: Path, console: Console, hosts: int = 4, shaping: str = "auto", keep_fleet: bool = False
) -> tuple[RunOutcome, dict[str, Path]]:
    """Fleet up, matrix, report, fleet down; returns the run's outcome and the report files."""
    check_shaping(shaping)  # every option is checked before anything is made
    LocalFleet().check_size(hosts)
    spec = load_matrix(DEMO_MATRIX)
    store = ResultsStore(out)
    store.open_for_run(spec.source, resume=False)
    console.print(f"bringing up the local fleet ({hosts} hosts, shaping: {shaping})")
    try:
        fleet = load_inventory(up(hosts, shaping))
        where = "a delay node" if fleet.delay_node else "each host"
        console.print(f"fleet up; shaping on {where}; running {len(spec.cells())} cells")
        outcome = MatrixRunner(spec, fleet, store, console).run(resume=True)
    finally:
        if not keep_fleet:
            with interrupts_held():
                down()
    written = write_report(out, out / "report")
    return outcome, written
