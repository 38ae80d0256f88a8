"""The analytic cost model: an iteration's time and its parts from compute rates and a network.

The pipeline is played out step by step (vectorized over pipelines and candidate placements):
a stage runs its steps in schedule order, each step waits for its input to arrive; a send
leaves when the step is done and the sender's egress is free, takes A/β on the wire (sends of
one host are serialized on its egress) and arrives α later. With equal stages and a free
network this is the GPipe bound (M + S − 1)·(t_f + t_b).

Then each stage's replicas average gradients of N bytes:
- `ps`: the stage's replica-0 host is the server. Each other replica pushes N to it (α + N/β
  over its own egress, all at once; the server's native ingress rate bounds their sum), then
  the server sends the average back to all D − 1 over its one egress: (D − 1)·N/β, + α.
  With an ingress as slow as the egress this is the textbook 2·(α + (D − 1)·N/β).
- `allreduce`: a ring, 2·(D − 1) steps of N/D bytes over the slowest ring hop:
  2·(D − 1)·α + 2·(D − 1)/D·N/β.
Each rank then steps its optimizer, and the iteration ends with a dissemination barrier
(⌈log₂ W⌉ rounds of one hop), as rank 0 times it.

Parts (they sum to the iteration time): `compute` = M·(t_f + t_b) of the slowest stage;
`bubble` = the pipeline without transfers minus that; `activation_transfer` = what transfers
add to the pipeline; `optimizer`; `ps_sync` or `allreduce` = what the sync adds after the
optimizer-only end; `barrier`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from experiments.netmodel import Network
from experiments.schedule import op_order
from experiments.workload import Workload

DEFAULT_FLOPS = 14e12
"""Compute rate per device when nothing is calibrated: 14 TFLOP/s, a V100-class GPU in fp32
(its data-sheet peak is 15.7). Nobody measured it for this model: calibrate when you can."""
DEFAULT_MEMORY_BYTES_PER_S = 900e9
"""Memory bandwidth the optimizer step is bound by, uncalibrated: a V100's 900 GB/s."""
OPTIMIZER_BYTES_PER_PARAM = 28
"""AdamW reads parameter, gradient and two moments (16 B) and writes three of them (12 B)."""


@dataclass(frozen=True)
class StageCompute:
    """Seconds per micro-batch forward and backward, and per optimizer step, of each stage."""

    forward_s: np.ndarray
    backward_s: np.ndarray
    optimizer_s: np.ndarray

    def scaled(self, factor: float) -> StageCompute:
        """Forward and backward times multiplied by `factor` (e.g. a larger micro-batch)."""
        return StageCompute(self.forward_s * factor, self.backward_s * factor, self.optimizer_s)


def compute_from_flops(
    workload: Workload,
    flops_per_s: float = DEFAULT_FLOPS,
    memory_bytes_per_s: float = DEFAULT_MEMORY_BYTES_PER_S,
) -> StageCompute:
    """Stage times from the workload's FLOPs at one device rate (same for every stage)."""
    return StageCompute(
        forward_s=workload.forward_flops / flops_per_s,
        backward_s=workload.backward_flops / flops_per_s,
        optimizer_s=workload.stage_params * OPTIMIZER_BYTES_PER_PARAM / memory_bytes_per_s,
    )


@dataclass
class Evaluation:
    """Iteration times and parts for a batch of placements (arrays over the batch)."""

    iteration_s: np.ndarray
    parts: dict[str, np.ndarray]
    slowest_hop_s: np.ndarray
    sync_s: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    """One configuration's predicted iteration time and its parts, in seconds."""

    iteration_s: float
    parts: dict[str, float]
    slowest_hop_s: float
    sync_per_stage_s: list[float]

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return {
            "predicted_iteration_s": self.iteration_s,
            "parts": self.parts,
            "slowest_hop_s": self.slowest_hop_s,
            "sync_per_stage_s": self.sync_per_stage_s,
        }


def rank_order_placement(n_stages: int, n_replicas: int) -> np.ndarray:
    """Host of (stage s, replica r) = rank r·S + s: one rank per host, hosts in rank order."""
    return np.arange(n_stages * n_replicas).reshape(n_replicas, n_stages).T.copy()


def predict(
    workload: Workload,
    compute: StageCompute,
    network: Network,
    placement: np.ndarray | None = None,
) -> Prediction:
    """Predicted iteration of `workload`, stage (s, replica r) on host placement[s, r]."""
    if placement is None:
        placement = rank_order_placement(workload.n_stages, workload.n_replicas)
    result = evaluate(workload, compute, network, placement[np.newaxis])
    return Prediction(
        iteration_s=float(result.iteration_s[0]),
        parts={name: float(value[0]) for name, value in result.parts.items()},
        slowest_hop_s=float(result.slowest_hop_s[0]),
        sync_per_stage_s=[float(x) for x in result.sync_s[:, 0]],
    )


def evaluate(
    workload: Workload, compute: StageCompute, network: Network, placements: np.ndarray
) -> Evaluation:
    """Evaluate K placements at once: `placements` has shape (K, S, D) of host indices."""
    n_stages, n_replicas = workload.n_stages, workload.n_replicas
    if placements.shape[1:] != (n_stages, n_replicas):
        raise ValueError(f"placements of shape {placements.shape} for {n_stages}×{n_replicas}")
    hosts = np.moveaxis(placements, 1, 0)  # (S, K, D)
    hops = _hops(workload, network, hosts)
    free = _run_pipeline(workload, compute, None)
    done = _run_pipeline(workload, compute, hops)  # (S, K, D)
    sync_end = _sync(workload, network, hosts, done)
    opt = compute.optimizer_s.reshape(-1, 1, 1)
    entry = sync_end + opt
    total = _barrier(network, hosts, entry)

    stage_work = workload.n_micro * (compute.forward_s + compute.backward_s)
    compute_part = float(stage_work.max())
    no_transfer_end = float(free.max())
    pipeline_end = done.max(axis=(0, 2))
    optimizer_end = (done + opt).max(axis=(0, 2))
    work_end = entry.max(axis=(0, 2))
    sync_name = "allreduce" if workload.dp_mode == "allreduce" else "ps_sync"
    parts = {
        "compute": np.full_like(total, compute_part),
        "bubble": np.full_like(total, no_transfer_end - compute_part),
        "activation_transfer": pipeline_end - no_transfer_end,
        "optimizer": optimizer_end - pipeline_end,
        sync_name: work_end - optimizer_end,
        "barrier": total - work_end,
    }
    fw_lat, fw_wire, bw_lat, bw_wire = hops
    slowest = np.maximum(fw_lat + fw_wire, bw_lat + bw_wire).max(axis=(0, 2), initial=0.0)
    return Evaluation(
        iteration_s=total,
        parts=parts,
        slowest_hop_s=np.broadcast_to(slowest, total.shape).astype(float),
        sync_s=(sync_end - done).max(axis=2),
    )


def _hops(workload: Workload, network: Network, hosts: np.ndarray):
    """Latency and wire time of each stage boundary, forward (s → s+1) and backward."""
    a, b = hosts[:-1], hosts[1:]
    size = workload.activation_bytes
    return (
        network.latency_s[a, b],
        size / network.bytes_per_s[a, b],
        network.latency_s[b, a],
        size / network.bytes_per_s[b, a],
    )


def _run_pipeline(workload: Workload, compute: StageCompute, hops) -> np.ndarray:
    """When each stage of each pipeline is done (its last step and its last send); `hops` None
    means free transfers."""
    n_stages, n_micro = workload.n_stages, workload.n_micro
    if hops is None:
        shape = (1, 1)
        zero = np.zeros((max(n_stages - 1, 0), 1, 1))
        fw_lat = fw_wire = bw_lat = bw_wire = zero
    else:
        fw_lat, fw_wire, bw_lat, bw_wire = hops
        shape = fw_lat.shape[1:] if n_stages > 1 else (1, 1)
    free = np.zeros((n_stages, *shape))
    egress = np.zeros((n_stages, *shape))
    forward_in = np.zeros((n_stages, n_micro, *shape))
    backward_in = np.zeros((n_stages, n_micro, *shape))
    t_f, t_b = compute.forward_s, compute.backward_s
    last = n_stages - 1
    for s, backward, m in op_order(workload.schedule, n_stages, n_micro):
        if not backward:
            free[s] = np.maximum(free[s], forward_in[s, m]) + t_f[s]
            if s < last:
                egress[s] = np.maximum(free[s], egress[s]) + fw_wire[s]
                forward_in[s + 1, m] = egress[s] + fw_lat[s]
        else:
            free[s] = np.maximum(free[s], backward_in[s, m]) + t_b[s]
            if s > 0:
                egress[s] = np.maximum(free[s], egress[s]) + bw_wire[s - 1]
                backward_in[s - 1, m] = egress[s] + bw_lat[s - 1]
    return np.maximum(free, egress)


def _sync(workload: Workload, network: Network, hosts: np.ndarray, done: np.ndarray):
    """When each rank holds the averaged gradients of its stage."""
    n_replicas = workload.n_replicas
    done = np.broadcast_to(done, hosts.shape).astype(float)
    if n_replicas == 1:
        return done
    size = workload.grad_bytes.reshape(-1, 1)
    if workload.dp_mode == "allreduce":
        ring_next = np.roll(hosts, -1, axis=2)
        step = (
            network.latency_s[hosts, ring_next]
            + size[..., None] / n_replicas / (network.bytes_per_s[hosts, ring_next])
        )
        start = done.max(axis=2)
        end = start + 2 * (n_replicas - 1) * step.max(axis=2)
        return np.broadcast_to(end[..., None], done.shape)
    server, others = hosts[..., :1], hosts[..., 1:]
    push_start = np.maximum(done[..., 1:], done[..., :1])
    push_latency = network.latency_s[others, server]
    arrivals = push_start + push_latency + size[..., None] / network.bytes_per_s[others, server]
    ingress = network.ingress_bytes_per_s[server[..., 0]]
    ingress_bound = (push_start + push_latency).min(axis=2) + (n_replicas - 1) * size / ingress
    push_end = np.maximum(arrivals.max(axis=2), ingress_bound)
    pull_wire = (size[..., None] / network.bytes_per_s[server, others]).sum(axis=2)
    sent = push_end + pull_wire
    received = sent[..., None] + network.latency_s[server, others]
    return np.concatenate([sent[..., None], received], axis=2)


def _barrier(network: Network, hosts: np.ndarray, entry: np.ndarray) -> np.ndarray:
    """When rank 0 leaves a dissemination barrier the ranks enter at `entry` (S, K, D)."""
    n_stages, n_batch, n_replicas = entry.shape
    world = n_stages * n_replicas
    by_rank = np.moveaxis(entry, 1, 0).transpose(0, 2, 1).reshape(n_batch, world)
    host_of = np.moveaxis(hosts, 1, 0).transpose(0, 2, 1).reshape(n_batch, world)
    times = by_rank
    for k in range(math.ceil(math.log2(world)) if world > 1 else 0):
        source = np.roll(np.arange(world), 1 << k)
        heard = times[:, source] + network.latency_s[host_of[:, source], host_of]
        times = np.maximum(times, heard)
    return times[:, 0]
