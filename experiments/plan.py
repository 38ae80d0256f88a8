"""`wanlab run --dry-run`: what a matrix would do, computed without touching any host."""

from __future__ import annotations

from experiments.matrix import MatrixSpec
from inventory.models import Fleet
from netem.fleet import trees_for
from netem.tree import tc_commands


def plan_rows(spec: MatrixSpec, fleet: Fleet) -> list[dict]:
    """One row per cell: its id, world size and the hosts its ranks run on (rank order, as the
    matrix's placement puts them)."""
    rows = []
    for cell in spec.cells():
        config = spec.trainer_config(cell)
        hosts = spec.place(cell, fleet)
        rows.append(
            {
                "cell": cell.cell_id,
                "world": config.world_size,
                "micro_batches": config.n_micro,
                "hosts": " ".join(h.name for h in hosts),
            }
        )
    return rows


def tc_preview(spec: MatrixSpec, fleet: Fleet) -> dict[str, dict[str, list[str]]]:
    """For each profile of the matrix, the `tc` commands each host would get."""
    preview = {}
    for name, target in spec.targets.items():
        trees = trees_for(target, fleet.hosts)
        preview[name] = {
            host.name: (
                tc_commands(trees[host.name], host.interface or "IF")
                if trees[host.name] is not None
                else ["(unshaped)"]
            )
            for host in fleet.hosts
        }
    return preview
