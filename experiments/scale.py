"""A scale model of a fleet on the local lab (`wanlab scale TARGET --to local`).

The lab keeps what it can keep exactly: the target's topology (stages, DP degrees, so every
rank), micro-batches, schedule, DP mode, every delay, and each stage's compute time (emulated:
trainer/emulated.py). What it cannot carry it scales, within each profile, by one factor s:
every tensor (activations, parameters, gradients), every rate, and the TCP windows (socket-buffer
maxima, initial window). Every time in the model is then the target's: a transfer of s·A bytes
at s·β takes A/β, and a window of s·W over a path of s·β·R is as full as W over β·R.

A profile's s is the largest at which every host sending at that profile's rate at once stays
within the lab's forwarding ceiling (with headroom), lowered where that makes the target's
initial window a whole number of segments: TCP opens with whole segments, and a window rounded
up to one ramps to a tensor's size in fewer round trips than the target's did (at 50 ms, 3.7
doublings instead of 6.2 for a GPT-3 XL activation; the lab ran 15 % faster). A slower profile
so carries larger tensors than a faster one; a slowdown compares times, which s does not change.
The derivation says where the lab falls short: a latency the lab's own hop already exceeds, or
an initial window below one segment. A target whose window or tensors would shrink below what
TCP can carry, or with more ranks than the lab holds, is refused.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from experiments.axes import AXES, product_order, scale_axes
from experiments.costmodel.analytic import StageCompute
from experiments.costmodel.calibrate import Calibration, workload_of
from experiments.costmodel.predict import predict_config, tcp_for
from experiments.costmodel.tcp import DEFAULT_MTU, mss_of, payload_share, receive_window
from experiments.lab.fleet import MAX_HOSTS
from experiments.matrix import Cell, MatrixSpec
from experiments.results import CellRecord
from experiments.scalegroups import dimensionless_groups, payload_bps
from experiments.scalespec import with_factor
from inventory.errors import ConfigError
from inventory.names import NAME_LENGTH
from netem.profile import Profile
from netem.tcp import KERNEL_INITCWND, TcpSettings
from trainer.config import TrainerConfig

HEADROOM = 0.8
"""The share of the lab's forwarding ceiling the scaled traffic may use at its peak."""
MIN_WINDOW_SEGMENTS = 4
"""The smallest scaled window TCP still carries as a window (below it, ACK timing rules)."""
MIN_TENSOR_SEGMENTS = 4
"""The fewest segments a scaled activation may fill (fewer: packets, not rates, set its time)."""
MIN_CHUNK_KB = 16.0
"""The smallest piece the lab's gradient chains forward. Each piece is a message of its own,
handed on by a rank process: with 48 ranks on this machine's 2 cores, 1 KiB pieces cost about
5 ms each and made a GPT-3 XL stage's sync 2.3 times slower than 256 KiB ones."""


LAB_LEASE_S = 300.0
"""The shaping lease a scale model's cells run with: the lab runs every rank of the target on
a few cores, and renewals to a delay node shaping 48 hosts fell behind the default 30 s lease
(the hosts reverted mid-cell); the runner fails a cell whose network lapsed either way."""


@dataclass(frozen=True)
class Lab:
    """What the lab measured: one-way latency of an unshaped hop, the most it forwards, and the
    share of a receive buffer its kernel offers as window (None: what adv_win_scale leaves)."""

    latency_s: float
    ceiling_bps: float
    receive_share: float | None = None
    max_hosts: int = MAX_HOSTS
    mtu: int = DEFAULT_MTU
    """The lab's interface MTU: its segment, and the payload share of its shaped rates."""
    delays_whole: bool = False
    """True where a delay d is d one-way in all: the lab's delay node takes its own hop out of
    every delay it applies (netem/mailbox.py), so its own hop is not taken off again here."""

    def delay_ms_for(self, one_way_s: float) -> float:
        """The delay to ask of the lab for this one-way latency (0: its own hop is as long)."""
        if one_way_s <= self.latency_s:
            return 0.0
        return round((one_way_s if self.delays_whole else one_way_s - self.latency_s) * 1000, 3)

    def one_way_s(self, delay_ms: float) -> float:
        """The one-way latency of a lab hop asked for `delay_ms`."""
        if delay_ms == 0:
            return self.latency_s
        return delay_ms / 1000 + (0.0 if self.delays_whole else self.latency_s)

    @property
    def mss(self) -> int:
        """The lab's TCP segment."""
        return mss_of(self.mtu)

    def rate_bps(self, payload_bps: float) -> float:
        """The shaped rate at which the lab carries `payload_bps` of data."""
        return payload_bps / payload_share(self.mtu)

    def tcp(self, settings: TcpSettings) -> dict:
        """`settings` on the lab's hosts, as the cost model takes them."""
        share = {"receive_share": self.receive_share} if self.receive_share else {}
        return settings.model_dump(exclude_none=True) | share


@dataclass(frozen=True)
class Measured:
    """A target that ran: each cell's calibration (its measured twin's) and measured times."""

    calibration_for: Callable[[dict], Calibration]
    finished: dict[str, CellRecord]
    """Its finished cells by id (`measured_cells`)."""
    repeats: int

    def times(self, cell: Cell) -> list[float]:
        """The iteration times the target measured for `cell`, one per finished repeat."""
        ids = [replace(cell, repeat=repeat).cell_id for repeat in range(self.repeats)]
        return [self.finished[i].summary.iteration_s for i in ids if i in self.finished]


@dataclass(frozen=True)
class ProfileScale:
    """One profile of the scale model: its factor, the lab profile, the trainer fields the
    factor sizes and every TCP setting scaled by it."""

    factor: float
    profile: Profile
    tensors: dict
    """Trainer fields sized by the factor (the gradient chains' pieces and buckets)."""
    tcp: dict[str, TcpSettings]
    """Lab TCP setting name → its settings; one per TCP setting of the target."""

    def lab_trainer(self, emulated: dict) -> dict:
        """The lab's trainer table for this profile's cells, from the emulated one."""
        return with_factor(emulated, self.factor, self.tensors)


@dataclass(frozen=True)
class ScaleModel:
    """The scaled matrix's parts and how well it keeps the target's dimensionless groups."""

    trainer: dict
    """The target's trainer table with its compute emulated (the factor comes per profile)."""
    scales: dict[str, ProfileScale]
    """Target profile name → how the lab carries it."""
    tcp_names: dict[str, str]
    """Lab TCP setting name → the target's."""
    groups: list[dict]
    targets: list[dict]
    """Per lab cell: its coordinates and the target cell's predicted iteration time."""


def scaled_name(name: str) -> str:
    """The scale model's name: the target's, cut to leave room, and `-scale` (still a name)."""
    suffix = "-scale"
    return name[: NAME_LENGTH - len(suffix)] + suffix


def scaled_matrix(
    model: ScaleModel, spec: MatrixSpec, calibration: Calibration, iterations: int, warmup: int
) -> dict:
    """The scaled matrix as TOML data: the lab's profiles and TCP settings, emulated compute,
    and a [scale] table that names the target and its predicted iteration times. [trainer] and
    [tcp] hold the baseline profile's factor; a profile with another has its own entry."""
    baseline = baseline_profile(spec)
    base = model.scales[baseline]
    trainer = base.lab_trainer(model.trainer) | {"iterations": iterations, "warmup": warmup}
    own = {
        scale.profile.short(): {
            "factor": scale.factor,
            "trainer": dict(scale.tensors),
            "tcp": _tcp_tables(scale.tcp),
        }
        for scale in model.scales.values()
        if scale.factor != base.factor
    }
    return {
        "matrix": {
            "name": scaled_name(spec.header.name),
            "inventory": "local",
            "repeats": spec.header.repeats,
        },
        "trainer": trainer,
        "axes": {
            axis.key: getattr(spec.axes, axis.key)
            for axis in product_order()
            if getattr(spec.axes, axis.key) is not None
        }
        | {
            "profiles": [scale.profile.short() for scale in model.scales.values()],
            "tcp": list(model.tcp_names),
        },
        "tcp": _tcp_tables(base.tcp),
        "probe": {"seconds": 1.0, "count": 10},
        "timeouts": {"cell_s": spec.timeouts.cell_s, "lease_s": LAB_LEASE_S},
        "scale": {
            "target": str(spec.source.resolve()),
            "calibration": calibration.source,
            "factor": base.factor,
            "baseline_profile": baseline,
            "cells": model.targets,
            "profiles": own,
        },
    }


def _tcp_tables(tcp: dict[str, TcpSettings]) -> dict:
    return {name: settings.model_dump(exclude_none=True) for name, settings in tcp.items()}


def baseline_profile(spec: MatrixSpec) -> str:
    """The target profile slowdowns are measured against: its unshaped one, else its first."""
    unshaped = [name for name, t in spec.targets.items() if getattr(t, "is_default", False)]
    return (unshaped or spec.axes.profiles)[0]


def scale_factor(spec: MatrixSpec, calibration: Calibration, lab: Lab, rate_bps: float) -> float:
    """s of a profile of `rate_bps`: every rank of the largest cell sending at that rate fills
    at most HEADROOM of the lab; within that, the largest s at which every TCP setting's initial
    window is a whole number of segments, where there is one."""
    most = min(1.0, HEADROOM * lab.ceiling_bps / (spec.max_world_size * rate_bps))
    segments = [_initial_segments(setting, calibration, lab) for setting in spec.tcp.values()]
    whole = sorted(
        {k / n for n in segments for k in range(1, math.floor(n * most) + 1)}, reverse=True
    )
    for factor in whole:
        if all(math.isclose(n * factor, round(n * factor)) for n in segments):
            return factor
    return most


def _initial_segments(setting: TcpSettings | None, calibration: Calibration, lab: Lab) -> float:
    """The target's initial window over all sockets of a pipeline hop's connection, in the lab's
    segments (the target's segments may be larger: its MTU)."""
    known = tcp_for(setting, calibration.tcp) or {}
    initial = (known.get("initcwnd") or KERNEL_INITCWND) * _hop_sockets(calibration)
    return initial * mss_of(calibration.native.mtu) / lab.mss


def _hop_sockets(calibration: Calibration) -> int:
    """Sockets of the target's pipeline hop (its backend's sockets × point-to-point channels);
    the lab's gloo carries every connection on one."""
    return calibration.backend.sockets * calibration.backend.p2p_channels


def derive(
    spec: MatrixSpec,
    calibration: Calibration,
    lab: Lab,
    measured: Measured | None = None,
) -> ScaleModel:
    """The scale model of `spec` (its compute and TCP from `calibration`) on `lab`;
    ConfigError if it cannot be carried. With `measured` (a results folder's own cells), each
    target cell is predicted on its own calibration and carries its measured time."""
    source = str(spec.source)
    profiles = _profiles(spec)
    if spec.max_world_size > lab.max_hosts:
        raise ConfigError(
            source, "axes.dp_degrees",
            f"{spec.max_world_size} ranks; the lab holds at most {lab.max_hosts} hosts",
        )  # fmt: skip
    if set(spec.axes.engines) != {"gpipe"}:
        raise ConfigError(source, "axes.engines", "a scale model emulates engine 'gpipe' only")
    if spec.trainer.get("emulate") is not None:
        raise ConfigError(source, "trainer.emulate", "is already a scale model")
    if spec.workloads:
        raise ConfigError(
            source, "axes.workloads", "a scale model emulates the built-in trainer only"
        )
    for axis in AXES:
        if axis.optional and not axis.scale_kept and getattr(spec.axes, axis.key) is not None:
            raise ConfigError(
                source, f"axes.{axis.key}", "a scale model keeps [trainer]'s value: remove the axis"
            )
    if spec.trainer.get("tensor", 1) > 1 or "fsdp" in spec.axes.dp_modes:
        raise ConfigError(
            source, "trainer.tensor" if spec.trainer.get("tensor", 1) > 1 else "axes.dp_modes",
            "emulated compute has no tensor-parallel or fully sharded stage",
        )  # fmt: skip
    first = spec.trainer_config(spec.cells()[0])
    compute = calibration.compute_for(calibration.workload_for(first))
    trainer = _emulated_trainer(spec, first, compute, calibration)
    tcp_names = {f"scaled-{name}": name for name in spec.tcp}
    scales = {}
    for name, profile in profiles.items():
        s = scale_factor(spec, calibration, lab, lab.rate_bps(payload_bps(profile, calibration)))
        tcp = {
            lab_name: _scaled_tcp(tcp_for(spec.tcp[target], calibration.tcp), calibration,
                                  lab, s, source)
            for lab_name, target in tcp_names.items()
        }  # fmt: skip
        scaled = _scaled_profile(profile, calibration, lab, s)
        scales[name] = ProfileScale(s, scaled, _scaled_tensors(first, calibration, s), tcp)
        _check_tensors(spec, scales[name].lab_trainer(trainer), lab, source)
    if len({scale.profile.short() for scale in scales.values()}) != len(profiles):
        raise ConfigError(source, "axes.profiles", "two profiles scale to the same lab profile")
    lab_tcp = {target: lab_name for lab_name, target in tcp_names.items()}
    targets = []
    for cell in spec.cells():
        if cell.repeat > 0:
            continue  # a target cell's repeats share its coordinates
        params = cell.params()
        predicted = predict_config(
            spec.trainer_config(cell), spec.targets[cell.profile],
            measured.calibration_for(params) if measured else calibration, None,
            spec.tcp_settings(cell),
        )  # fmt: skip
        target = {axis.field: getattr(cell, axis.field) for axis in scale_axes()}
        target |= {
            "profile": scales[cell.profile].profile.short(),  # the lab's, for the target's
            "tcp": lab_tcp[cell.tcp],
            "target_profile": cell.profile,
            "predicted_s": predicted["predicted_iteration_s"],
        }
        if measured and (times := measured.times(cell)):
            target["measured_s"] = statistics.fmean(times)
        targets.append(target)
    groups = dimensionless_groups(
        spec, first, compute, calibration, lab, trainer, scales, tcp_names
    )
    return ScaleModel(trainer, scales, tcp_names, groups, targets)


def _profiles(spec: MatrixSpec) -> dict[str, Profile]:
    for name, target in spec.targets.items():
        if not isinstance(target, Profile):
            raise ConfigError(
                str(spec.source), "axes.profiles", f"{name!r} is a pair matrix; a scale model "
                "takes uniform profiles (one shape on every host)",
            )  # fmt: skip
    return dict(spec.targets)


def _emulated_trainer(
    spec: MatrixSpec, config: TrainerConfig, compute: StageCompute, calibration: Calibration
) -> dict:
    """The target's trainer table (`config` its first cell, `compute` its stage times) with its
    stages' compute times emulated."""
    per_sequence = 1000 / config.micro_batch
    trainer = dict(spec.trainer)
    if calibration.gpipe_schedule == "reference":
        trainer["gpipe_schedule"] = "reference"
    trainer["emulate"] = {
        "forward_ms": [round(t * per_sequence, 4) for t in compute.forward_s],
        "backward_ms": [round(t * per_sequence, 4) for t in compute.backward_s],
        "optimizer_ms": [round(t * 1000, 4) for t in compute.optimizer_s],
    }
    return trainer


def _scaled_tensors(config: TrainerConfig, calibration: Calibration, s: float) -> dict:
    """The trainer fields that size the gradient chains' pieces and buckets, × s: the piece is
    the target backend's collective step where it has one (NCCL's), else the trainer's."""
    step = calibration.backend_for(config).collective_step_bytes
    chunk_kb = step / 1024 if step is not None else config.ps_chunk_kb
    tensors = {"ps_chunk_kb": round(max(MIN_CHUNK_KB, chunk_kb * s), 3)}
    if config.ps_bucket_mb:
        tensors["ps_bucket_mb"] = config.ps_bucket_mb * s
    return tensors


def _scaled_profile(profile: Profile, calibration: Calibration, lab: Lab, s: float) -> Profile:
    """The target's one-way latency (native hop plus delay) as the lab's delay; its data rate
    × s, at the rate that carries it through the lab's shaper."""
    delay_ms = lab.delay_ms_for(calibration.native.latency_s + profile.delay_ms / 1000)
    return profile.model_copy(
        update={
            "name": None,
            "delay_ms": delay_ms,
            "jitter_ms": min(profile.jitter_ms, delay_ms),
            "rate_bps": int(
                max(1000, round(lab.rate_bps(payload_bps(profile, calibration) * s), -3))
            ),
            "limit": None,
        }
    )


def _scaled_tcp(
    known: dict | None, calibration: Calibration, lab: Lab, s: float, source: str
) -> TcpSettings:
    """The target's TCP (a pipeline hop's sockets, `_hop_sockets`, behind the backend's
    buffer) as one lab socket with every buffer scaled by s. The receive buffer is sized for
    the lab's kernel: it offers the target's window times s. The lab's backend (gloo) has no
    buffer of its own: its send buffer takes the target's backend buffer too, where that leaves
    the window as it was (the receive buffer the smaller)."""
    if not known or not known.get("rmem") or not known.get("wmem"):
        raise ConfigError(
            source, "axes.tcp", "the target's TCP buffers are unknown: give a TCP setting "
            "(e.g. a preset) or calibrate on hosts whose settings were recorded",
        )  # fmt: skip
    sockets = _hop_sockets(calibration)
    highs = {name: known[name][2] * sockets * s for name in ("rmem", "wmem")}
    adv_win_scale = known.get("adv_win_scale", 1)
    receive = receive_window(highs["rmem"], adv_win_scale, known.get("receive_share"))
    if lab.receive_share:
        highs["rmem"] = receive / lab.receive_share
    with_backend = highs["wmem"] + calibration.backend.p2p_buffer_bytes * s
    if min(receive, with_backend) == min(receive, highs["wmem"]):
        highs["wmem"] = with_backend
    buffers = {}
    for name, high in highs.items():
        scaled = round(high)
        if scaled < MIN_WINDOW_SEGMENTS * lab.mss:
            raise ConfigError(
                source, f"tcp {name}", f"{known[name][2]} B × {sockets} sockets × s = {scaled} B,"
                f" under {MIN_WINDOW_SEGMENTS} segments: the lab cannot carry so small a window",
            )  # fmt: skip
        low, default, _ = known[name]
        buffers[name] = (min(low, scaled), min(default, scaled), scaled)
    initial = (known.get("initcwnd") or KERNEL_INITCWND) * sockets * s
    initial *= mss_of(calibration.native.mtu) / lab.mss  # in the lab's segments
    return TcpSettings(
        congestion_control=known.get("congestion_control"),
        adv_win_scale=known.get("adv_win_scale"),
        slow_start_after_idle=known.get("slow_start_after_idle"),
        initcwnd=max(1, round(initial)),
        **buffers,
    )


def _check_tensors(spec: MatrixSpec, trainer: dict, lab: Lab, source: str) -> None:
    for cell in spec.cells():
        config = TrainerConfig(**spec.trainer_config(cell).model_dump() | trainer)
        segments = workload_of(config).activation_bytes / lab.mss
        if segments < MIN_TENSOR_SEGMENTS:
            raise ConfigError(
                source, "axes.micro_batches", f"a scaled activation of micro-batch "
                f"{cell.micro_batch} fills {segments:.1f} segments, under {MIN_TENSOR_SEGMENTS}",
            )  # fmt: skip
