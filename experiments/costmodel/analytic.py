"""The analytic cost model: an iteration's time and its parts from compute rates and a network.

Messages go as gloo sends them over TCP: a send waits until the receiver has posted its
receive and that notice has crossed back (α the other way), then takes A/β on the wire and
arrives α later.

The iteration is timed as the trainer times it: every rank runs its pipeline steps, averages
gradients, steps its optimizer and enters the barrier that ends the iteration (see
`experiments.costmodel.barrier`: one round trip per round, and the ranks leave it skewed); rank 0
reports from leaving one such barrier to leaving the next. Iterations run back to back, so
each starts skewed as the previous one left: the model plays `STEADY_PASSES` of them.

The pipeline is played out step by step (vectorized over pipelines and candidate placements):
a stage runs its steps in schedule order, each step waits for its input to arrive; a send
leaves when the step is done, the sender's egress is free and the receiver is ready (forward
receives are posted at a rank's start), takes A/β on the wire (sends of one host are
serialized on its egress) and arrives α later. With equal stages and a free network this is
the GPipe bound (M + S − 1)·(t_f + t_b).

Then each stage's replicas average their gradients, and under tensor parallelism a stage's
shards all-reduce its activations: `experiments.costmodel.collectives` plays each DP mode's
sync and each ring. The pipeline and the sync are modelled on shard 0's hosts; the other
shards' run alike on their own hosts.

Parts (they sum to the iteration time, all from rank 0's start): `compute` = M·(t_f + t_b) of
the slowest stage; `tensor_allreduce` = what the tensor groups' all-reduces add to that (only
when T > 1); `bubble` = the pipeline without transfers minus both;
`activation_transfer` = what transfers and the ranks' skew add to the pipeline; `optimizer`;
`ps_sync`, `allreduce` or `reduce_scatter` (fsdp) = what the sync adds after the
optimizer-only end; `fsdp_allgather` = what the gathers add to the stages' work; `barrier`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.costmodel.barrier import dissemination_barrier
from experiments.costmodel.collectives import gradient_sync, ring_collective_s, tensor_allreduce_s
from experiments.costmodel.network import Network
from experiments.costmodel.schedule import op_order
from experiments.costmodel.workload import GRAD_BYTES, Workload
from trainer.layout import Layout

DEFAULT_FLOPS = 14e12
"""Compute rate per device when nothing is calibrated: 14 TFLOP/s, a V100-class GPU in fp32
(its data-sheet peak is 15.7). Nobody measured it for this model: calibrate when you can."""
DEFAULT_MEMORY_BYTES_PER_S = 900e9
"""Memory bandwidth the optimizer step is bound by, uncalibrated: a V100's 900 GB/s."""
SYNC_PARTS = {"allreduce": "allreduce", "fsdp": "reduce_scatter"}
"""The part a DP mode's sync is reported as (`ps_sync` for the others)."""
STEADY_PASSES = 2
"""Iterations played back to back: each starts skewed as the previous one's barrier left it."""


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
        optimizer_s=workload.optimizer_bytes / memory_bytes_per_s,
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


def rank_order_placement(layout: Layout) -> np.ndarray:
    """The rank of shard 0 of each (stage, replica), (S, D), as `Layout.rank` gives it: the
    host of each with one rank per host, hosts in rank order."""
    return np.array(
        [[layout.rank(s, r) for r in range(layout.dp_degree)] for s in range(layout.stages)]
    )


def predict(
    workload: Workload,
    compute: StageCompute,
    network: Network,
    placement: np.ndarray | None = None,
) -> Prediction:
    """Predicted iteration of `workload`, stage (s, replica r) on host placement[s, r]."""
    if placement is None:
        placement = rank_order_placement(workload.layout)
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
    layout = workload.layout
    if placements.shape[1:] != (layout.stages, layout.dp_degree):
        raise ValueError(
            f"placements of shape {placements.shape} for {layout.stages}×{layout.dp_degree}"
        )
    hosts = np.moveaxis(placements, 1, 0)  # (S, K, D)
    order = _shard_0_order(layout)
    host_of = _by_rank(hosts, order)
    hops = _hops(workload, network, hosts)
    pure = compute
    with_tensor = _with_tensor_allreduces(workload, compute, network, hosts)
    compute = _with_gathers(workload, with_tensor, network, hosts)  # = with_stage_collectives
    free = _run_pipeline(workload, compute, None, np.zeros(hosts.shape))
    opt = compute.optimizer_s.reshape(-1, 1, 1)

    crossing = []  # what the phase barrier adds to rank 0 beyond the last rank's arrival

    def world_barrier(arrive: np.ndarray) -> np.ndarray:
        leave = dissemination_barrier(network.latency_s, host_of, _by_rank(arrive, order))
        crossing.append(leave[:, 0] - arrive.max(axis=(0, 2)))
        return _by_stage(leave, order)

    leave = np.zeros(host_of.shape)
    for _ in range(STEADY_PASSES):
        crossing.clear()
        start = leave - leave[:, :1]  # from rank 0's start, as rank 0 times the iteration
        done = _run_pipeline(workload, compute, hops, _by_stage(start, order), world_barrier)
        sync_end = gradient_sync(workload, network, hosts, done)
        entry = sync_end + opt
        leave = dissemination_barrier(network.latency_s, host_of, _by_rank(entry, order))
    # the reference's clock stops at rank 0's own end; ours as it leaves the closing barrier
    total = _by_rank(entry, order)[:, 0] if workload.schedule == "reference" else leave[:, 0]
    phase_barrier = crossing[0] if crossing else 0.0

    compute_part, tensor_busy, busy = (
        _busiest_stage(workload, times, hosts.shape) for times in (pure, with_tensor, compute)
    )
    no_transfer_end = free.max(axis=(0, 2))
    pipeline_end = done.max(axis=(0, 2))
    optimizer_end = (done + opt).max(axis=(0, 2))
    work_end = entry.max(axis=(0, 2))
    sync_name = SYNC_PARTS.get(workload.dp_mode, "ps_sync")
    parts = {
        "compute": compute_part,
        **({"tensor_allreduce": tensor_busy - compute_part} if layout.tensor > 1 else {}),
        **({"fsdp_allgather": busy - tensor_busy} if _gathers(workload) else {}),
        "bubble": np.maximum(no_transfer_end - busy, 0.0),  # ≥ 0 but for rounding
        "activation_transfer": pipeline_end - no_transfer_end - phase_barrier,
        "optimizer": optimizer_end - pipeline_end,
        sync_name: work_end - optimizer_end,
        "barrier": total - work_end + phase_barrier,
    }
    forward = hops.forward_latency + network.wire_s(hops.size, hops.senders, hops.receivers, 0.0)
    backward = hops.backward_latency + network.wire_s(hops.size, hops.receivers, hops.senders, 0.0)
    slowest = np.maximum(forward, backward).max(axis=(0, 2), initial=0.0)
    return Evaluation(
        iteration_s=total,
        parts=parts,
        slowest_hop_s=np.broadcast_to(slowest, total.shape).astype(float),
        sync_s=(sync_end - done).max(axis=2),
    )


def with_stage_collectives(
    workload: Workload, compute: StageCompute, network: Network, hosts: np.ndarray
) -> StageCompute:
    """Stage times with what each micro-batch spends in collectives inside its stage added:
    tensor-parallel all-reduces and fsdp's gathers ((S, K, D) arrays where there are any)."""
    with_tensor = _with_tensor_allreduces(workload, compute, network, hosts)
    return _with_gathers(workload, with_tensor, network, hosts)


def _busiest_stage(workload: Workload, compute: StageCompute, shape: tuple) -> np.ndarray:
    """M·(t_f + t_b) of the busiest stage, per placement."""
    work = workload.n_micro * _per_stage(compute.forward_s + compute.backward_s)
    return np.broadcast_to(work, shape).max(axis=(0, 2))


def _gathers(workload: Workload) -> bool:
    return workload.dp_mode == "fsdp" and workload.layout.dp_degree > 1


def _with_gathers(
    workload: Workload, compute: StageCompute, network: Network, hosts: np.ndarray
) -> StageCompute:
    """Under `fsdp`, stage times with the parameter all-gathers added (see the module's
    docstring); else `compute` itself."""
    if not _gathers(workload):
        return compute
    n_micro = workload.n_micro
    blocks = workload.stage_blocks.reshape(-1, 1, 1)
    block_bytes = blocks * workload.block_params * GRAD_BYTES
    root_bytes = workload.grad_bytes.reshape(-1, 1, 1) - block_bytes
    ring = np.broadcast_to(hosts[..., np.newaxis, :], (*hosts.shape, hosts.shape[-1]))
    gather_blocks = ring_collective_s(workload, network, ring, block_bytes[..., np.newaxis], blocks)
    gather_root = ring_collective_s(workload, network, ring, root_bytes[..., np.newaxis])
    return StageCompute(
        _per_stage(compute.forward_s) + gather_blocks + gather_root / n_micro,
        _per_stage(compute.backward_s) + gather_blocks / n_micro,
        compute.optimizer_s,
    )


def _per_stage(seconds: np.ndarray) -> np.ndarray:
    """Stage times as (S, K, D) or broadcastable to it: (S,) becomes (S, 1, 1)."""
    return seconds.reshape(-1, 1, 1) if seconds.ndim == 1 else seconds


def _with_tensor_allreduces(
    workload: Workload, compute: StageCompute, network: Network, hosts: np.ndarray
) -> StageCompute:
    """Stage times with each micro-batch's tensor-group all-reduces added: (S, K, D) arrays,
    or `compute` itself when T = 1."""
    if workload.layout.tensor == 1:
        return compute
    each = tensor_allreduce_s(workload, network, hosts)
    forward_count, backward_count = (c.reshape(-1, 1, 1) for c in workload.tensor_counts())
    return StageCompute(
        _per_stage(compute.forward_s) + forward_count * each,
        _per_stage(compute.backward_s) + backward_count * each,
        compute.optimizer_s,
    )


def _shard_0_order(layout: Layout) -> np.ndarray:
    """Each (stage, replica)'s place among the shard-0 ranks in rank order, (S, D): the ranks
    the model plays the pipelines and the barrier on."""
    return rank_order_placement(layout) // layout.tensor


def _by_rank(per_stage: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(S, K, D) → (K, W): stage s of replica r at its place `order[s, r]`."""
    per_rank = np.empty((per_stage.shape[1], order.size), per_stage.dtype)
    per_rank[:, order] = np.moveaxis(per_stage, 1, 0)
    return per_rank


def _by_stage(per_rank: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(K, W) → (S, K, D), the inverse of `_by_rank`."""
    return np.moveaxis(per_rank[:, order], 1, 0)


@dataclass(frozen=True)
class Hops:
    """The stage boundaries' links: latency each way, and the wire time of one activation (or
    its gradient) given how long the connection was idle (TCP may have to ramp up again)."""

    network: Network
    senders: np.ndarray  # (S − 1, K, D): the host of stage s
    receivers: np.ndarray  # the host of stage s + 1
    size: float

    @property
    def forward_latency(self) -> np.ndarray:
        """α of s → s + 1."""
        return self.network.latency_s[self.senders, self.receivers]

    @property
    def backward_latency(self) -> np.ndarray:
        """α of s + 1 → s."""
        return self.network.latency_s[self.receivers, self.senders]

    def forward_wire(self, s: int, idle_s) -> np.ndarray:
        """Wire time of an activation from stage s to s + 1."""
        return self.network.wire_s(self.size, self.senders[s], self.receivers[s], idle_s)

    def backward_wire(self, s: int, idle_s) -> np.ndarray:
        """Wire time of a gradient from stage s + 1 to s."""
        return self.network.wire_s(self.size, self.receivers[s], self.senders[s], idle_s)

    def send_s(self, src: np.ndarray, dst: np.ndarray, idle_s) -> np.ndarray:
        """From a message's first byte leaving `src` until its send completes: the wire time of
        what the sender's buffers (its backend's and its sockets') cannot hold."""
        unbuffered = np.maximum(self.size - self.network.buffered_bytes(src), 0.0)
        return self.network.wire_s(unbuffered, src, dst, idle_s)


def _hops(workload: Workload, network: Network, hosts: np.ndarray) -> Hops:
    """The links between consecutive stages of every pipeline."""
    return Hops(network, hosts[:-1], hosts[1:], workload.activation_bytes)


def _run_pipeline(
    workload: Workload,
    compute: StageCompute,
    hops: Hops | None,
    start: np.ndarray | None = None,
    barrier=None,
) -> np.ndarray:
    """When each stage of each pipeline is done (its last step and its last send).

    `hops` None means free transfers. `start` (S, K, D) is when each rank starts (zero when
    None); a rank posts its forward receives then, so a forward send to it leaves no earlier
    than its start plus the hop back (gloo's rendezvous). Backward receives are posted when a
    stage's forwards end, always before the gradient it waits for can reach it. A connection's
    first send of the iteration follows a long idle; later ones follow the gap since its last.

    Under the `reference` schedule (the reference system's GPipe) every rank waits in a barrier
    of the whole world between its forwards and its backwards, entered once its forwards are
    computed and sent (`barrier`: when each rank leaves it, given when each entered; None: all
    leave as the last enters, as on a free network). Its backend runs a communicator's kernels
    one after another in launch order, and a middle stage launches each receive after the
    previous send: its next step waits until that send completes (until what is left of it fits
    in the sender's buffers).
    """
    n_stages, n_micro = workload.layout.stages, workload.n_micro
    if start is None:
        start = np.zeros((n_stages, *(hops.senders.shape[1:] if hops else (1, 1))))
    free = start.astype(float)
    egress = free.copy()
    zero = np.zeros((max(n_stages - 1, 0), *free.shape[1:]))
    fw_lat = hops.forward_latency if hops else zero
    bw_lat = hops.backward_latency if hops else zero
    forward_done = [-np.inf] * max(n_stages - 1, 0)  # when each link's last send ended
    backward_done = list(forward_done)
    receiver_ready = start[1:] + bw_lat  # the forward receiver's notice reaches the sender
    forward_in = np.zeros((n_stages, n_micro, *free.shape[1:]))
    backward_in = np.zeros_like(forward_in)
    t_f, t_b = compute.forward_s, compute.backward_s
    last = n_stages - 1
    reference = workload.schedule == "reference"
    sent = np.full(free.shape, -np.inf)  # when each stage's last send completed
    crossed = False
    for s, backward, m in _steps(workload.schedule, n_stages, n_micro):
        if backward and reference and not crossed:
            arrive = np.maximum(free, egress)
            everyone = arrive.max(axis=(0, 2), keepdims=True)
            free = barrier(arrive) if barrier else np.broadcast_to(everyone, arrive.shape)
            free = free.copy()
            crossed = True
        serial = reference and hops is not None and 0 < s < last
        if not backward:
            ready = np.maximum(free[s], forward_in[s, m])
            free[s] = (np.maximum(ready, sent[s]) if serial else ready) + t_f[s]
            if s < last:
                leaves = np.maximum(np.maximum(free[s], egress[s]), receiver_ready[s])
                idle = leaves - forward_done[s]
                wire = hops.forward_wire(s, idle) if hops else 0.0
                egress[s] = forward_done[s] = leaves + wire
                forward_in[s + 1, m] = egress[s] + fw_lat[s]
                if serial:
                    sent[s] = leaves + hops.send_s(hops.senders[s], hops.receivers[s], idle)
        else:
            ready = np.maximum(free[s], backward_in[s, m])
            free[s] = (np.maximum(ready, sent[s]) if serial else ready) + t_b[s]
            if s > 0:
                leaves = np.maximum(free[s], egress[s])
                idle = leaves - backward_done[s - 1]
                wire = hops.backward_wire(s - 1, idle) if hops else 0.0
                egress[s] = backward_done[s - 1] = leaves + wire
                backward_in[s - 1, m] = egress[s] + bw_lat[s - 1]
                if serial:
                    src, dst = hops.receivers[s - 1], hops.senders[s - 1]
                    sent[s] = leaves + hops.send_s(src, dst, idle)
    return np.maximum(free, egress)


def _steps(schedule: str, n_stages: int, n_micro: int) -> list:
    """Every step in an order that respects what each waits for; the reference's GPipe runs
    GPipe's steps with every forward before every backward (its barrier between them)."""
    if schedule != "reference":
        return list(op_order(schedule, n_stages, n_micro))
    steps = op_order("gpipe", n_stages, n_micro)
    return [op for op in steps if not op[1]] + [op for op in steps if op[1]]
