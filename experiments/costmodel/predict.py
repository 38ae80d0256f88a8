"""Predictions per matrix cell: the cost model on each cell's configuration and network.

Each cell's ranks sit where the runner places them: with the inventory, by the matrix's
placement (ranks sharing a host, one per slot, reach each other inside the machine); without
it, one rank per host in rank order. A profile shapes every host alike; a pair matrix needs the
hosts' names and labels from the inventory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from experiments.costmodel.analytic import predict
from experiments.costmodel.calibrate import Calibration, emulated_compute
from experiments.costmodel.network import Network, pair_network, uniform_network
from experiments.matrix import MatrixSpec
from experiments.results import CellRecord
from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.safewrite import write_file
from netem.fleet import Target
from netem.pairs import Addressable, PairMatrix
from netem.tcp import TcpSettings
from trainer.config import TrainerConfig

PREDICTIONS = "predictions.jsonl"


def network_for(
    target: Target, world_size: int, calibration: Calibration, hosts: Sequence[Addressable] | None
) -> Network:
    """The cell's network between its ranks: a uniform profile, or a pair matrix over each
    rank's host (`hosts`, rank order: a host of several ranks is named once per rank)."""
    if not isinstance(target, PairMatrix):
        network = uniform_network(world_size, target, calibration.native)
    elif hosts is None:
        raise ConfigError(target.source, None, "a pair matrix needs the inventory's hosts (-i)")
    elif len(hosts) < world_size:
        raise ConfigError(
            target.source, None, f"needs {world_size} hosts, the inventory has {len(hosts)}"
        )
    else:
        keys = [target.key_of(host) for host in hosts[:world_size]]
        network = pair_network(keys, target, calibration.native)
    if hosts is None or len({host.name for host in hosts[:world_size]}) == world_size:
        return network
    return network.on_machines([host.name for host in hosts[:world_size]])


def tcp_for(setting: TcpSettings | None, hosts_own: dict | None) -> dict | None:
    """A cell's TCP: its setting's fields over the hosts' own (None: unknown, the ideal)."""
    if setting is None:
        return hosts_own
    return (hosts_own or {}) | setting.model_dump(exclude_none=True)


def predict_config(
    config: TrainerConfig,
    target: Target,
    calibration: Calibration,
    hosts: Sequence[Addressable] | None = None,
    tcp_setting: TcpSettings | None = None,
) -> dict:
    """`{"predicted_iteration_s", "parts", "slowest_hop_s", ...}` for one configuration;
    `tcp_setting` is what the cell set on the hosts (None: their own)."""
    workload = calibration.workload_for(config)
    tcp = tcp_for(tcp_setting, calibration.tcp)
    network = network_for(target, config.world_size, calibration, hosts)
    network = network.with_tcp(calibration.tcp_for(config, tcp, network.n_hosts))
    if config.emulate is not None:
        compute = emulated_compute(config)
    else:
        compute = calibration.compute_for(workload)
    prediction = predict(workload, compute, network)
    return prediction.as_dict() | {"calibration": calibration.describe()}


def predict_matrix(
    spec: MatrixSpec,
    calibration_for: Callable[[dict], Calibration],
    fleet: Fleet | None = None,
    measured: dict[str, dict] | None = None,
) -> list[dict]:
    """One row per cell: its coordinates, prediction, and the measurement when there is one.
    With `fleet`, each cell's ranks sit where the matrix's placement puts them."""
    rows = []
    for cell in spec.cells():
        params = cell.params()
        row = {"cell_id": cell.cell_id, "params": params}
        if spec.workload(cell) is not None:  # a user's job: nothing to model it from
            rows.append(row | {"modelled": False, "why": f"workload {cell.workload}: not modelled"})
            continue
        hosts = spec.place(cell, fleet) if fleet is not None else None
        row |= predict_config(
            spec.trainer_config(cell), spec.targets[cell.profile], calibration_for(params), hosts,
            spec.tcp_settings(cell),
        )  # fmt: skip
        record = (measured or {}).get(cell.cell_id)
        if record is not None:
            actual = record.summary.iteration_s
            row["measured_iteration_s"] = actual
            row["error"] = row["predicted_iteration_s"] / actual - 1
        rows.append(row)
    return rows


def measured_cells(records: list[CellRecord]) -> dict[str, CellRecord]:
    """Finished cells by id (the last record of a cell wins)."""
    return {record.cell_id: record for record in records if record.ok}


def store_predictions(directory: Path, rows: list[dict]) -> Path:
    """Write `predictions.jsonl` next to the cells, one row per cell, replacing an older one."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return write_file(directory / PREDICTIONS, text, "--store")
