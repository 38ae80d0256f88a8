"""Fleets larger than any lab: the cost model over hundreds to thousands of hosts in regions.

A scenario is a workload, hosts labelled with their region, and a region pair matrix. A
placement puts each (stage, replica) on a host. The search builds pipelines greedily (each
next stage on the free host with the cheapest activation hop from the previous one, from a
random first host), orders the replicas the same way on their gradient-sync cost, and keeps
the best of several restarts by the full model; random placements are the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.costmodel.analytic import StageCompute, evaluate
from experiments.costmodel.calibrate import Calibration, workload_of
from experiments.costmodel.network import Network, pair_network
from experiments.costmodel.workload import Workload
from netem.pairs import PairMatrix, load_pair_matrix_file
from trainer.config import TrainerConfig

WORLD = Path(__file__).with_name("world-regions.toml")
"""The example world-wide region matrix."""


@dataclass(frozen=True)
class Scenario:
    """A workload on hosts spread over regions."""

    workload: Workload
    compute: StageCompute
    network: Network
    regions: list[str]


def make_scenario(
    config: TrainerConfig,
    calibration: Calibration,
    matrix: PairMatrix,
    hosts_per_region: dict[str, int],
) -> Scenario:
    """`config` on hosts_per_region[r] hosts in each region r of the region-keyed `matrix`."""
    regions = [region for region, count in hosts_per_region.items() for _ in range(count)]
    if config.tensor > 1:
        raise ValueError("the search places one rank per (stage, replica): use tensor = 1")
    if len(regions) < config.world_size:
        raise ValueError(f"{len(regions)} hosts for a world of {config.world_size}")
    workload = workload_of(config)
    return Scenario(
        workload=workload,
        compute=calibration.compute_for(workload),
        network=pair_network(regions, matrix, calibration.native),
        regions=regions,
    )


def world_scenario(
    config: TrainerConfig, calibration: Calibration, n_hosts: int, matrix_path: Path = WORLD
) -> Scenario:
    """`n_hosts` spread evenly over the regions of the world-wide matrix."""
    matrix = load_pair_matrix_file(matrix_path)
    names = sorted({link.src for link in matrix.links})
    base, extra = divmod(n_hosts, len(names))
    counts = {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}
    return make_scenario(config, calibration, matrix, counts)


def random_placements(scenario: Scenario, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` placements of (stage, replica) on distinct random hosts: shape (count, S, D)."""
    layout = scenario.workload.layout
    hosts = scenario.network.n_hosts
    chosen = np.stack([rng.permutation(hosts)[: layout.world_size] for _ in range(count)])
    return chosen.reshape(count, layout.dp_degree, layout.stages).transpose(0, 2, 1)


def greedy_placement(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """One greedy placement (S, D): cheap pipelines first, then replicas in sync order."""
    w, net = scenario.workload, scenario.network
    hop = net.latency_s + w.activation_bytes / net.bytes_per_s
    np.fill_diagonal(hop, np.inf)
    hop = hop * (1 + 1e-9 * rng.random(hop.shape))  # random tie-breaks between restarts
    free = np.ones(net.n_hosts, dtype=bool)
    pipelines = np.empty((w.layout.dp_degree, w.layout.stages), dtype=int)
    for r in range(w.layout.dp_degree):
        current = rng.choice(np.flatnonzero(free))
        for s in range(w.layout.stages):
            if s:
                current = int(np.argmin(np.where(free, hop[current], np.inf)))
            pipelines[r, s] = current
            free[current] = False
    return _order_replicas(scenario, pipelines).T


def _order_replicas(scenario: Scenario, pipelines: np.ndarray) -> np.ndarray:
    """Replica 0 = the pipeline cheapest to sync with all others; then nearest-next."""
    w, net = scenario.workload, scenario.network
    size = (w.grad_bytes / w.layout.dp_degree)[np.newaxis, np.newaxis, :]
    a, b = pipelines[:, np.newaxis, :], pipelines[np.newaxis, :, :]
    cost = (net.latency_s[a, b] + size / net.bytes_per_s[a, b]).max(axis=2)
    np.fill_diagonal(cost, np.inf)
    order = [int(np.argmin(np.where(np.isinf(cost), 0, cost).sum(axis=1)))]
    left = np.ones(len(pipelines), dtype=bool)
    left[order[0]] = False
    while left.any():
        nxt = int(np.argmin(np.where(left, cost[order[-1]], np.inf)))
        order.append(nxt)
        left[nxt] = False
    return pipelines[order]


def explore(scenario: Scenario, restarts: int = 4, randoms: int = 4, seed: int = 0) -> dict:
    """Greedy restarts against random placements, all evaluated by the full model at once."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    greedy = np.stack([greedy_placement(scenario, rng) for _ in range(restarts)])
    searched = time.perf_counter()
    random = random_placements(scenario, randoms, rng)
    result = evaluate(
        scenario.workload, scenario.compute, scenario.network, np.concatenate([greedy, random])
    )
    evaluated = time.perf_counter()
    times = result.iteration_s
    best = int(np.argmin(times[:restarts]))
    return {
        "hosts": scenario.network.n_hosts,
        "stages": scenario.workload.layout.stages,
        "dp_degree": scenario.workload.layout.dp_degree,
        "micro_batches": scenario.workload.n_micro,
        "dp_mode": scenario.workload.dp_mode,
        "best_iteration_s": float(times[best]),
        "best_parts": {name: float(v[best]) for name, v in result.parts.items()},
        "best_slowest_hop_s": float(result.slowest_hop_s[best]),
        "best_regions_per_pipeline": _regions_per_pipeline(scenario, greedy[best]),
        "random_iteration_s": [float(t) for t in times[restarts:]],
        "random_slowest_hop_s": [float(h) for h in result.slowest_hop_s[restarts:]],
        "speedup_over_random_mean": float(times[restarts:].mean() / times[best]),
        "search_s": searched - started,
        "evaluate_s": evaluated - searched,
        "placements_evaluated": restarts + randoms,
    }


def _regions_per_pipeline(scenario: Scenario, placement: np.ndarray) -> float:
    """Mean number of distinct regions a pipeline of `placement` (S, D) spans."""
    regions = np.array(scenario.regions)[placement]
    return float(np.mean([len(set(regions[:, r])) for r in range(placement.shape[1])]))
