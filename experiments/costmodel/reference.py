"""The reference experiment as data: its description (reference.toml), each input with its
source, the calibration it gives and what `--explain` says about it.

Every input feeds one term of the model (`FEEDS`); the shapes must reproduce the sizes the
reference printed about itself, the backend's and kernel's figures must be the ones the model
plays, and the compute rate fitted to the calibration cell may not exceed the device's peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experiments.costmodel.backend import Backend
from experiments.costmodel.barrier import ALGORITHM, rounds
from experiments.costmodel.calibrate import Calibration, from_total, workload_of
from experiments.costmodel.network import Native
from experiments.costmodel.tcp import RTO_MIN_S, mss_of, payload_share
from inventory.errors import ConfigError, config_error
from inventory.tomlfile import read_toml
from netem.probe import adv_win_share
from netem.profile import BUILTIN, Profile
from trainer.config import TrainerConfig

REFERENCE_FILE = Path(__file__).with_name("reference.toml")
MIB = 2**20

FEEDS: dict[str, str] = {
    "trainer.model": "the blocks' shapes (checked against [model]): every stage's FLOPs, "
    "activations and parameters",
    "trainer.head": "the last stage's parameters (its sync's bytes) and FLOPs: a pooler on one "
    "token per sequence, no vocabulary projection",
    "trainer.vocab_size": "the first stage's embedding: its parameters, the largest sync (stage 0)",
    "trainer.batch": "micro-batches per iteration (batch / micro-batch): the pipeline's length",
    "trainer.micro_batch": "the activation's bytes and each step's FLOPs",
    "trainer.pipeline": "stages: the hops, the bubble, the layers per stage",
    "trainer.dtype": "bytes per activation element on the wire (4)",
    "trainer.recompute": "the backward's FLOPs: three forwards (two and the recompute)",
    "trainer.dp_mode": "the sync: a chain reduce to replica 0, then a broadcast from it",
    "trainer.ps_flat": "the sync's buckets: one, the stage's whole gradient (its chain filled "
    "once)",
    "trainer.optimizer": "the optimizer step's memory traffic (SGD: 12 B per parameter)",
    "trainer.lr": "nothing timed (the trainer's own setting)",
    "trainer.engine": "the schedule: every forward, then every backward",
    "trainer.gpipe_schedule": "the reference schedule: a barrier between the phases, rank 0's "
    "clock, a middle stage's next step after its previous send",
    "trainer.device": "the backend: NCCL's figures below, not gloo's",
    "model.layers": "checked: the named model's layers",
    "model.d_model": "checked: the named model's width",
    "model.heads": "checked: the named model's heads (FLOPs do not depend on them)",
    "model.seq_len": "checked: the named model's sequence (activation bytes, attention FLOPs)",
    "model.ffn": "checked: 4 × d_model, the named model's feed-forward width",
    "backend.name": "NCCL's path: collectives along its ring, credit ahead, its own buffers",
    "backend.sockets": "windows, initial windows and send buffers per connection (× 16)",
    "backend.p2p_channels": "connections per pipeline hop (sockets × 1)",
    "backend.collective_channels": "connections per link of the sync's chain (sockets × 2)",
    "backend.p2p_step_bytes": "what NCCL holds of an activation send (× steps in flight): when "
    "the send completes",
    "backend.steps_in_flight": "steps NCCL holds of a send (× the step)",
    "backend.collective_step_bytes": "the piece the sync's chain forwards at a time (its fill)",
    "backend.collective_buffer_bytes": "what NCCL holds of a sync's send per channel",
    "backend.ring_step_latencies": "one-way latencies per step of a ring collective",
    "network.mtu": "TCP's segment (MSS = MTU − 52): the initial window in bytes and the payload "
    "share of a shaped rate",
    "network.native_rate_bps": "the unshaped hop's rate (the default profile)",
    "network.native_latency_s": "the unshaped hop's one-way latency (added to every delay)",
    "network.netem_limit_packets_per_gbit_ms": "checked: no shaper drops (the model has no loss)",
    "tcp.congestion_control": "slow start doubling per round trip (cubic)",
    "tcp.rmem": "the receive window per socket (with adv_win_scale)",
    "tcp.wmem": "the send buffer per socket: what a send may leave unsent when it completes",
    "tcp.adv_win_scale": "the share of the receive buffer offered as window (half)",
    "tcp.slow_start_after_idle": "an idle connection's window halved per RTO idle",
    "tcp.initcwnd": "the initial window, in segments per socket",
    "tcp.rto_min_s": "checked: the RTO an idle connection's restart counts in (R + 0.2 s)",
    "barrier.group": "checked: the phase barrier's ranks (every rank of the world)",
    "barrier.algorithm": "checked: ⌈log2 W⌉ rounds, each a notice and the data (2 latencies)",
    "barrier.timed": "checked: one barrier inside the timed span (between the phases)",
    "timing.span": "checked: the iteration ends at rank 0's own end, no closing barrier",
    "device.peak_flops": "the ceiling the fitted compute rate may not exceed",
    "device.memory_bytes_per_s": "the optimizer step's time",
    "storage.activation_mib": "checked: the activation's bytes from the shapes",
    "storage.first_stage_mib": "checked: stage 0's parameters from the shapes",
    "storage.last_stage_mib": "checked: the last stage's parameters from the shapes",
}
"""What each input of the description feeds; `checked` ones fix what the model plays."""

SECTIONS = (
    "trainer",
    "model",
    "backend",
    "network",
    "tcp",
    "barrier",
    "timing",
    "device",
    "storage",
)


class Input(BaseModel):
    """One input: its value and where it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: Any
    source: str = Field(min_length=1)


class Measurement(BaseModel):
    """One measured cell of the reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profile: str
    dp_degree: int = Field(ge=1, strict=True)
    iteration_s: float = Field(gt=0, allow_inf_nan=False)
    source: str = Field(min_length=1)
    calibrate: bool = False


class Header(BaseModel):
    """The description's name and device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    device: str


class Description(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: Header
    sources: dict[str, str]
    trainer: dict[str, Input]
    model: dict[str, Input]
    backend: dict[str, Input]
    network: dict[str, Input]
    tcp: dict[str, Input]
    barrier: dict[str, Input]
    timing: dict[str, Input]
    device: dict[str, Input]
    storage: dict[str, Input]
    measurement: list[Measurement] = Field(min_length=1)

    def inputs(self) -> dict[str, Input]:
        """Every input by its `section.name`, in file order."""
        return {
            f"{section}.{name}": entry
            for section in SECTIONS
            for name, entry in getattr(self, section).items()
        }

    def value(self, key: str) -> Any:
        """The value of input `section.name`."""
        section, name = key.split(".")
        return getattr(self, section)[name].value


@dataclass(frozen=True)
class Reference:
    """A loaded and checked description."""

    description: Description
    file: str

    def config(self, dp_degree: int = 1) -> TrainerConfig:
        """The trainer configuration the reference ran, at `dp_degree`."""
        values = {name: entry.value for name, entry in self.description.trainer.items()}
        try:
            return TrainerConfig(**values, dp_degree=dp_degree)
        except ValidationError as error:
            raise config_error(error, self.file, prefix="trainer") from None

    def ran(self, config: TrainerConfig) -> bool:
        """Whether `config` is what the reference ran (at its own DP degree): every trainer
        input the same but the device (`auto` finds the GPU) and the learning rate (untimed)."""
        ran = self.config(config.dp_degree)
        fields = self.description.trainer.keys() - {"device", "lr"}
        return all(getattr(config, field) == getattr(ran, field) for field in fields)

    def backend(self) -> Backend:
        """The reference's backend: NCCL's figures on its hosts."""
        v = self.description.value
        return Backend(
            v("backend.name"),
            sockets=v("backend.sockets"),
            p2p_channels=v("backend.p2p_channels"),
            collective_channels=v("backend.collective_channels"),
            p2p_buffer_bytes=float(v("backend.p2p_step_bytes") * v("backend.steps_in_flight")),
            collective_step_bytes=float(v("backend.collective_step_bytes")),
            collective_buffer_bytes=float(v("backend.collective_buffer_bytes")),
            ring_step_latencies=v("backend.ring_step_latencies"),
        )

    def native(self) -> Native:
        """The reference hosts' unshaped network."""
        v = self.description.value
        return Native(
            latency_s=float(v("network.native_latency_s")),
            rate_bps=float(v("network.native_rate_bps")),
            mtu=v("network.mtu"),
        )

    def tcp(self) -> dict:
        """The reference hosts' TCP settings (`netem.tcp.TcpSettings` fields)."""
        fields = ("congestion_control", "rmem", "wmem", "adv_win_scale", "slow_start_after_idle")
        settings = {name: self.description.value(f"tcp.{name}") for name in fields}
        return settings | {"initcwnd": self.description.value("tcp.initcwnd")}

    def calibration_cell(self) -> Measurement:
        """The measurement the compute rate is fitted to."""
        return next(m for m in self.description.measurement if m.calibrate)

    def calibration(self, native: Native | None = None) -> Calibration:
        """Calibrated on the calibration cell: the one compute rate at which the model gives
        its measured time on its network (`native` over the description's, where given);
        ConfigError when that rate exceeds the device's peak."""
        cell = self.calibration_cell()
        native = native or self.native()
        source = f"the reference experiment: {self.description.reference.name}, " + (
            f"{cell.profile} DP {cell.dp_degree}, {cell.iteration_s:g} s"
        )
        calibration = from_total(
            self.config(cell.dp_degree), BUILTIN[cell.profile], cell.iteration_s, source,
            native, self.description.value("device.memory_bytes_per_s"), tcp=self.tcp(),
            backend=self.backend(), gpipe_schedule=self.description.value("trainer.gpipe_schedule"),
        )  # fmt: skip
        peak = float(self.description.value("device.peak_flops"))
        if calibration.flops_per_s > peak:
            raise ConfigError(
                self.file, "device.peak_flops", f"the fitted compute rate, "
                f"{calibration.flops_per_s / 1e12:.2f} TFLOP/s, exceeds the device's peak of "
                f"{peak / 1e12:g}: an input of the description is wrong",
            )  # fmt: skip
        return replace(calibration, peak_flops_per_s=peak)


def load_reference(path: Path = REFERENCE_FILE) -> Reference:
    """The description at `path`, checked (see the module's docstring)."""
    file = str(path)
    try:
        description = Description(**read_toml(path))
    except ValidationError as error:
        raise config_error(error, file) from None
    inputs = description.inputs()
    for key in inputs.keys() - FEEDS.keys():
        raise ConfigError(file, key, "is not an input the model takes")
    for key in FEEDS.keys() - inputs.keys():
        raise ConfigError(file, key, "missing: every input of the model needs a value and source")
    pattern = re.compile(rf"^({'|'.join(map(re.escape, description.sources))})\b")
    for key, entry in inputs.items():
        if not pattern.match(entry.source):
            raise ConfigError(file, f"{key}.source", "must start with a name from [sources]")
    for index, cell in enumerate(description.measurement):
        if cell.profile not in BUILTIN:
            raise ConfigError(file, f"measurement[{index}].profile", "not a built-in profile")
    if sum(cell.calibrate for cell in description.measurement) != 1:
        raise ConfigError(file, "measurement", "exactly one measurement must have calibrate = true")
    reference = Reference(description, file)
    _check_plays(reference)
    return reference


def storage_mib(config: TrainerConfig) -> dict[str, int]:
    """The sizes the reference printed, from `config`'s shapes: an activation, stage 0's and the
    last stage's fp32 parameters, each as its code printed them (bytes // 1024 // 1024)."""
    workload = workload_of(config)
    params = workload.stage_params * 4
    return {
        "activation_mib": int(workload.activation_bytes) // MIB,
        "first_stage_mib": int(params[0]) // MIB,
        "last_stage_mib": int(params[-1]) // MIB,
    }


def _check_plays(reference: Reference) -> None:
    """Refuse a description whose fixed inputs are not what the model plays, or whose shapes do
    not give the sizes the reference printed."""
    file, v = reference.file, reference.description.value
    config = reference.config()
    gpt = config.gpt
    shapes = {
        "model.layers": gpt.n_layer,
        "model.d_model": gpt.n_embd,
        "model.heads": gpt.n_head,
        "model.seq_len": config.seq,
        "model.ffn": 4 * gpt.n_embd,
    }
    fixed = {
        "tcp.rto_min_s": RTO_MIN_S,
        "barrier.group": "world",
        "barrier.algorithm": ALGORITHM,
        "barrier.timed": 1,
        "timing.span": "rank0",
    }
    for key, played in (shapes | fixed).items():
        if v(key) != played:
            raise ConfigError(file, f"{key}.value", f"{v(key)!r}, but the model plays {played!r}")
    for name, computed in storage_mib(config).items():
        if v(f"storage.{name}") != computed:
            raise ConfigError(
                file, f"storage.{name}.value", f"{v(f'storage.{name}')} MiB reported, but the "
                f"shapes give {computed}",
            )  # fmt: skip


def limit_holds(reference: Reference, profile: Profile) -> tuple[float, float]:
    """(netem's queue limit under the reference's script, the most packets a host can queue at
    its shaper: every window of its connections full) for `profile`, in packets."""
    v = reference.description.value
    backend, native, tcp = reference.backend(), reference.native(), reference.tcp()
    window = tcp["rmem"][2] * adv_win_share(tcp["adv_win_scale"])
    links = 2 * backend.p2p_channels + 2 * backend.collective_channels  # each way, both phases
    queued = links * backend.sockets * window / native.mtu
    rate_gbit = (profile.rate_bps or native.rate_bps) / 1e9
    limit = v("network.netem_limit_packets_per_gbit_ms") * rate_gbit * profile.delay_ms
    return limit, queued


def explain(reference: Reference, calibration: Calibration, config: TrainerConfig) -> list[str]:
    """What `--explain` prints: every input with its value, the term it feeds and its source,
    the derived figures, where `config` (a cell of the matrix) differs from what the reference
    ran, and the calibration against the device's peak."""
    description = reference.description
    lines = [f"reference: {description.reference.name} ({description.reference.device})"]
    ran = reference.config(config.dp_degree)
    for key, entry in description.inputs().items():
        lines.append(f"  {key} = {entry.value!r}")
        lines.append(f"      feeds: {FEEDS[key]}")
        name, _, where = entry.source.partition(":")
        lines.append(f"      source: {entry.source}")
        if where and name in description.sources:
            lines.append(f"        ({name}: {description.sources[name]})")
        field = key.removeprefix("trainer.")
        if key.startswith("trainer.") and getattr(config, field) != getattr(ran, field):
            lines.append(f"      the matrix sets {getattr(config, field)!r}")
    native = calibration.native
    mss = mss_of(native.mtu)
    backend = calibration.backend
    lines += [
        "derived:",
        f"  MSS {mss} B; initial window {10 * mss} B per socket, "
        f"{10 * mss * backend.sockets} B per connection; "
        f"payload share of a shaped rate {payload_share(native.mtu):.4f}",
        f"  p2p buffer {backend.p2p_buffer_bytes:.0f} B; sync chunk "
        f"{backend.collective_step_bytes:.0f} B over {backend.collective_channels} channels",
        f"  barrier rounds: {rounds(config.world_size)} over {config.world_size} ranks",
        "  sizes (MiB, floored): " + ", ".join(f"{k} {n}" for k, n in storage_mib(config).items()),
    ]
    for name, profile in BUILTIN.items():
        if profile.rate_bps and profile.delay_ms:
            limit, queued = limit_holds(reference, profile)
            verdict = "no drops" if queued <= limit else "DROPS: the model has no loss"
            lines.append(
                f"  netem {name}: limit {limit:,.0f} packets, at most {queued:,.0f} queued: "
                + verdict
            )
    peak = calibration.peak_flops_per_s
    share = f", {calibration.flops_per_s / peak:.0%} of the peak {peak / 1e12:g}" if peak else ""
    lines.append(
        f"calibration: {calibration.source}: {calibration.flops_per_s / 1e12:.3f} TFLOP/s{share}"
    )
    return lines


def measured(reference: Reference) -> dict[tuple[str, int], Measurement]:
    """The reference's measured cells by (profile, DP degree)."""
    return {(m.profile, m.dp_degree): m for m in reference.description.measurement}


def reference_calibration(native: Native | None = None) -> Calibration:
    """The calibration of the reference's description (reference.toml)."""
    return load_reference().calibration(native)
