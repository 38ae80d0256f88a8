"""Where the cost model's compute times come from: one measured cell, or a FLOP rate.

A measured cell of our GPipe engine gives each stage's forward and backward time per
micro-batch and its optimizer step; they are reused for cells of the same partition (scaled
by the micro-batch size) and turned into an effective FLOP rate for any other. A cell that
gives only its iteration time (a library engine, or the reference experiment) is fitted: the
one FLOP rate at which the model predicts exactly that time on that cell's network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from experiments.costmodel.analytic import (
    DEFAULT_FLOPS,
    DEFAULT_MEMORY_BYTES_PER_S,
    StageCompute,
    compute_from_flops,
    predict,
    rank_order_placement,
    with_stage_collectives,
)
from experiments.costmodel.backend import GLOO, NCCL_DEFAULT, Backend
from experiments.costmodel.network import DEFAULT_NATIVE, Native, Network, uniform_network
from experiments.costmodel.tcp import TcpSide, mss_of, tcp_side
from experiments.costmodel.workload import Workload, make_workload
from netem.profile import Profile
from trainer.config import TrainerConfig

FIT_TOLERANCE = 1e-6
FIT_ROUNDS = 100
MIN_NATIVE_RATE_BPS = 1e5
"""The slowest native rate a calibration may fit: 100 kbit/s."""


def workload_of(config: TrainerConfig) -> Workload:
    """The cost model's view of a trainer configuration."""
    return make_workload(
        config.gpt,
        pipeline=config.pipeline,
        dp_degree=config.dp_degree,
        batch=config.batch,
        micro_batch=config.micro_batch,
        seq=config.seq,
        dtype=config.dtype,
        recompute=config.recompute,
        dp_mode=config.dp_mode,
        schedule=_schedule_of(config),
        layers=config.layers,
        bucket_bytes=config.ps_bucket_bytes,
        chunk_bytes=int(config.ps_chunk_kb * 1024),
        tensor_scale=config.emulate.scale if config.emulate is not None else 1.0,
        tensor=config.tensor,
        optimizer=config.optimizer,
    )


def _schedule_of(config: TrainerConfig) -> str:
    if config.engine == "pipelining-1f1b":
        return "1f1b"
    return "reference" if config.gpipe_schedule == "reference" else "gpipe"


def emulated_compute(config: TrainerConfig) -> StageCompute:
    """The stage times an emulated run holds for (its `emulate` section), exactly."""
    seconds = [
        config.emulate.stage_seconds(stage, config.pipeline, config.micro_batch)
        for stage in range(config.pipeline)
    ]
    forward, backward, optimizer = (np.array(column) for column in zip(*seconds, strict=True))
    return StageCompute(forward, backward, optimizer)


@dataclass(frozen=True)
class Calibration:
    """Compute rates for the model, the native network, and where both came from."""

    source: str
    flops_per_s: float
    memory_bytes_per_s: float
    native: Native
    stages: StageCompute | None = None
    measured: Workload | None = None
    tcp: dict | None = None
    """The hosts' own TCP settings (`netem.tcp.TcpSettings` fields) where known: the recorded
    ones of the cell calibrated on, or the reference hosts' preset."""
    backend: Backend = GLOO
    """The hosts' backend where the config does not name its device (`backend_for`)."""
    gpipe_schedule: str = "gpipe"
    """How the GPipe engine is modelled: wanlab's (`gpipe`) or the reference system's
    (`reference`: a barrier of every rank between the forwards and the backwards, and the
    iteration timed to rank 0's own end)."""
    peak_flops_per_s: float | None = None
    """The device's peak for the precision where known: the fitted rate stays below it."""

    def backend_for(self, config: TrainerConfig) -> Backend:
        """The backend `config` runs on: gloo on a CPU, NCCL on CUDA (this calibration's NCCL
        where it describes one), else this calibration's."""
        if config.device == "cpu":
            return GLOO
        if config.device == "cuda" and self.backend.name != "nccl":
            return NCCL_DEFAULT
        return self.backend

    def workload_for(self, config: TrainerConfig) -> Workload:
        """The cost model's view of `config`, with this calibration's GPipe schedule and its
        backend's ring steps and collective steps."""
        backend = self.backend_for(config)
        workload = replace(workload_of(config), ring_step_latencies=backend.ring_step_latencies)
        if backend.collective_step_bytes is not None:
            workload = replace(workload, chunk_bytes=backend.collective_step_bytes)
        if workload.schedule == "gpipe":
            return replace(workload, schedule=self.gpipe_schedule)
        return workload

    def tcp_for(self, config: TrainerConfig, tcp: dict | None, n_hosts: int) -> TcpSide | None:
        """The hosts' TCP as `config`'s backend uses it (None: unknown, the ideal network)."""
        return tcp_side([tcp] * n_hosts, mss=mss_of(self.native.mtu),
                        backend=self.backend_for(config))  # fmt: skip

    def compute_for(self, workload: Workload) -> StageCompute:
        """Stage times of `workload`: the measured ones when the partition matches, else FLOPs."""
        if self.stages is not None and _same_partition(self.measured, workload):
            return self.stages.scaled(workload.micro_batch / self.measured.micro_batch)
        return compute_from_flops(workload, self.flops_per_s, self.memory_bytes_per_s)

    def describe(self) -> dict:
        """What a prediction was calibrated on, for JSON."""
        return {
            "source": self.source,
            "per_stage_times": self.stages is not None,
            "flops_per_s": self.flops_per_s,
            "memory_bytes_per_s": self.memory_bytes_per_s,
            "native_latency_s": self.native.latency_s,
            "native_rate_bps": self.native.rate_bps,
            "native_mtu": self.native.mtu,
            "tcp": self.tcp,
            "backend": self.backend.describe(),
            "gpipe_schedule": self.gpipe_schedule,
            "peak_flops_per_s": self.peak_flops_per_s,
        }


def _same_partition(measured: Workload | None, target: Workload) -> bool:
    if measured is None or measured.layout.stages != target.layout.stages:
        return False
    if measured.seq != target.seq:
        return False
    per_sequence = measured.forward_flops / measured.micro_batch
    return bool(np.allclose(per_sequence, target.forward_flops / target.micro_batch))


def from_flops(
    flops_per_s: float = DEFAULT_FLOPS,
    memory_bytes_per_s: float = DEFAULT_MEMORY_BYTES_PER_S,
    native: Native = DEFAULT_NATIVE,
) -> Calibration:
    """No measurement: one assumed FLOP rate for every device."""
    source = f"assumed {flops_per_s / 1e12:g} TFLOP/s per device"
    return Calibration(source, flops_per_s, memory_bytes_per_s, native)


def from_stage_times(
    workload: Workload, stages: StageCompute, source: str, native: Native
) -> Calibration:
    """Measured per-stage times, with the FLOP and memory rates they imply."""
    work = workload.n_micro * (workload.forward_flops + workload.backward_flops)
    busy = workload.n_micro * (stages.forward_s + stages.backward_s)
    moved = workload.optimizer_bytes.sum()
    optimizer = stages.optimizer_s.sum()
    memory = moved / optimizer if optimizer > 0 else DEFAULT_MEMORY_BYTES_PER_S
    return Calibration(
        source, float(work.sum() / busy.sum()), float(memory), native, stages, workload
    )


def fit_flops(
    workload: Workload,
    network: Network,
    measured_s: float,
    memory_bytes_per_s: float = DEFAULT_MEMORY_BYTES_PER_S,
) -> float:
    """The FLOP rate at which the model predicts `measured_s` for `workload` on `network`.

    The compute-bound share of the prediction scales as 1/rate; iterate until it matches.
    """
    rate = DEFAULT_FLOPS
    for _ in range(FIT_ROUNDS):
        prediction = predict(
            workload, compute_from_flops(workload, rate, memory_bytes_per_s), network
        )
        scaled = prediction.parts["compute"] + prediction.parts["bubble"]
        fixed = prediction.iteration_s - scaled
        if measured_s <= fixed:
            raise ValueError(
                f"{measured_s:g} s is below what the network and optimizer alone take ({fixed:g} s)"
            )
        if abs(prediction.iteration_s - measured_s) <= FIT_TOLERANCE * measured_s:
            return rate
        rate *= scaled / (measured_s - fixed)
    raise ValueError(f"the FLOP rate fit for {measured_s:g} s did not converge")


def from_total(
    config: TrainerConfig,
    profile: Profile,
    measured_s: float,
    source: str,
    native: Native,
    memory_bytes_per_s: float = DEFAULT_MEMORY_BYTES_PER_S,
    tcp: dict | None = None,
    backend: Backend = GLOO,
    gpipe_schedule: str = "gpipe",
) -> Calibration:
    """Fit the FLOP rate to one cell's measured iteration time (its network uniform `profile`,
    its hosts' TCP `tcp` under `backend` where known, its GPipe run as `gpipe_schedule`)."""
    calibration = Calibration(
        f"{source} (fitted)", DEFAULT_FLOPS, memory_bytes_per_s, native, tcp=tcp,
        backend=backend, gpipe_schedule=gpipe_schedule,
    )  # fmt: skip
    network = uniform_network(config.world_size, profile, native)
    network = network.with_tcp(calibration.tcp_for(config, tcp, config.world_size))
    workload = calibration.workload_for(config)
    return replace(
        calibration, flops_per_s=fit_flops(workload, network, measured_s, memory_bytes_per_s)
    )


def fit_native_rate(
    workload: Workload, stages: StageCompute, profile: Profile, native: Native, measured_s: float
) -> float:
    """The native rate (bit/s) at which the model matches a measured cell, at most the probed one.

    The probe times one bulk flow on an idle fleet; during training the unshaped path carries
    the training's own traffic on machines busy computing (on the local fleet every packet is
    forwarded by the delay node, which shares the CPUs with the ranks), and delivers less.
    Unchanged when the model already reaches the measurement at the probed rate.
    """

    def predicted(rate_bps: float) -> float:
        slowed = Native(latency_s=native.latency_s, rate_bps=rate_bps)
        network = uniform_network(workload.layout.world_size, profile, slowed)
        return predict(workload, stages, network).iteration_s

    if predicted(native.rate_bps) >= measured_s:
        return native.rate_bps
    low, high = math.log(MIN_NATIVE_RATE_BPS), math.log(native.rate_bps)
    for _ in range(FIT_ROUNDS // 2):
        middle = (low + high) / 2
        low, high = (low, middle) if predicted(math.exp(middle)) < measured_s else (middle, high)
    return math.exp(high)


def without_stage_collectives(
    stages: StageCompute, workload: Workload, profile: Profile, native: Native
) -> StageCompute:
    """Measured stage times less what the model says their collectives inside the stage (tensor
    all-reduces, fsdp gathers) took on the cell's network (the model adds them back on the
    network it predicts for); at least a tenth of each time is kept as compute."""
    layout = workload.layout
    network = uniform_network(layout.world_size, profile, native)
    placement = rank_order_placement(layout)
    zero = np.zeros(layout.stages)
    spent = with_stage_collectives(
        workload, StageCompute(zero, zero, stages.optimizer_s), network, placement[:, None, :]
    )
    shape = (layout.stages, 1, layout.dp_degree)

    def replica_0(seconds: np.ndarray) -> np.ndarray:
        return seconds if seconds.ndim == 1 else np.broadcast_to(seconds, shape)[:, 0, 0]

    forward, backward = replica_0(spent.forward_s), replica_0(spent.backward_s)
    return StageCompute(
        np.maximum(stages.forward_s - forward, stages.forward_s / 10),
        np.maximum(stages.backward_s - backward, stages.backward_s / 10),
        stages.optimizer_s,
    )
