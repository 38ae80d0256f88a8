"""`wanlab run --dry-run`: what a matrix would do, computed without touching any host."""

from __future__ import annotations

import shlex

from experiments.matrix import MatrixSpec
from inventory.models import Fleet
from netem.fleet import dry_run


def plan_rows(spec: MatrixSpec, fleet: Fleet) -> list[dict]:
    """One row per cell: its id, world size and the hosts its ranks run on (rank order, as the
    matrix's placement puts them)."""
    rows = []
    for cell in spec.cells():
        workload = spec.workload(cell)
        hosts = spec.place(cell, fleet)
        rows.append(
            {
                "cell": cell.cell_id,
                "world": spec.layout(cell).world_size,
                "micro_batches": "—" if workload else spec.trainer_config(cell).n_micro,
                "hosts": " ".join(h.name for h in hosts),
                "runs": shlex.join(workload.table.command) if workload else "trainer",
            }
        )
    return rows


def tc_preview(spec: MatrixSpec, fleet: Fleet) -> dict[str, dict[str, list[str]]]:
    """For each profile of the matrix, the `tc` commands each host would get (`netem apply
    --dry-run`'s: on the delay node's interface where the fleet has one)."""
    preview = {}
    for name, target in spec.targets.items():
        answers = dry_run(fleet, target)
        preview[name] = {
            host: answer["commands"] or ["(unshaped)"] for host, answer in answers.items()
        }
    return preview
