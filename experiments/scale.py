"""A scale model of a fleet on the local lab (`wanlab scale TARGET --to local`).

The lab keeps what it can keep exactly: the target's topology (stages, DP degrees, so every
rank), micro-batches, schedule, DP mode, every delay, and each stage's compute time (emulated:
trainer/emulated.py). What it cannot carry it scales by one factor s: every tensor (activations,
parameters, gradients), every rate, and the TCP windows (socket-buffer maxima, initial window).
Every time in the model is then the target's: a transfer of s·A bytes at s·β takes A/β, and a
window of s·W over a path of s·β·R is as full as W over β·R.

s is chosen so that every host sending at its fastest rate at once stays within the lab's
forwarding ceiling (with headroom). The derivation says where the lab falls short: a latency the
lab's own hop already exceeds, or an initial window below one segment. A target whose window or
tensors would shrink below what TCP can carry, or with more ranks than the lab holds, is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.costmodel.analytic import StageCompute
from experiments.costmodel.calibrate import Calibration, workload_of
from experiments.costmodel.predict import predict_config, tcp_for
from experiments.costmodel.tcp import (
    MSS_BYTES,
    receive_window,
    tcp_side,
)
from experiments.matrix import MatrixSpec
from inventory.errors import ConfigError
from inventory.localfleet import MAX_HOSTS
from netem.profile import Profile
from netem.tcp import KERNEL_INITCWND, TcpSettings
from netem.tree import burst_bytes
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
ONE = 0
"""The only host of a one-host TcpSide."""
GROUP_TOLERANCE = 0.02
"""A group counts as kept when the lab's value is within this of the target's."""


@dataclass(frozen=True)
class Lab:
    """What the lab measured: one-way latency of an unshaped hop, the most it forwards, and the
    share of a receive buffer its kernel offers as window (None: what adv_win_scale leaves)."""

    latency_s: float
    ceiling_bps: float
    receive_share: float | None = None
    max_hosts: int = MAX_HOSTS

    def tcp(self, settings: TcpSettings) -> dict:
        """`settings` on the lab's hosts, as the cost model takes them."""
        share = {"receive_share": self.receive_share} if self.receive_share else {}
        return settings.model_dump(exclude_none=True) | share


@dataclass(frozen=True)
class ScaleModel:
    """The scaled matrix's parts and how well it keeps the target's dimensionless groups."""

    factor: float
    trainer: dict
    profiles: dict[str, str]
    """Lab profile (short form) → the target profile it stands for."""
    tcp: dict[str, TcpSettings]
    """Lab TCP setting name → its settings; one per TCP setting of the target."""
    tcp_names: dict[str, str]
    """Lab TCP setting name → the target's."""
    groups: list[dict]
    targets: list[dict]
    """Per lab cell: its coordinates and the target cell's predicted iteration time."""


def scaled_matrix(
    model: ScaleModel, spec: MatrixSpec, calibration: Calibration, iterations: int, warmup: int
) -> dict:
    """The scaled matrix as TOML data: the lab's profiles and TCP settings, emulated compute,
    and a [scale] table that names the target and its predicted iteration times."""
    trainer = model.trainer | {"iterations": iterations, "warmup": warmup}
    return {
        "matrix": {
            "name": f"{spec.header.name}-scale",
            "inventory": "local",
            "repeats": spec.header.repeats,
        },
        "trainer": trainer,
        "axes": {
            "profiles": list(model.profiles),
            "tcp": list(model.tcp),
            "dp_degrees": spec.axes.dp_degrees,
            "micro_batches": spec.axes.micro_batches,
            "engines": spec.axes.engines,
            "dp_modes": spec.axes.dp_modes,
        },
        "tcp": {name: s.model_dump(exclude_none=True) for name, s in model.tcp.items()},
        "probe": {"seconds": 1.0, "count": 10},
        "timeouts": {"cell_s": spec.timeouts.cell_s},
        "scale": {
            "target": str(spec.source.resolve()),
            "calibration": calibration.source,
            "factor": model.factor,
            "baseline_profile": baseline_profile(spec),
            "cells": model.targets,
        },
    }


def baseline_profile(spec: MatrixSpec) -> str:
    """The target profile slowdowns are measured against: its unshaped one, else its first."""
    unshaped = [name for name, t in spec.targets.items() if getattr(t, "is_default", False)]
    return (unshaped or spec.axes.profiles)[0]


def scale_factor(spec: MatrixSpec, calibration: Calibration, lab: Lab) -> float:
    """s: every rank of the largest cell sending at the fastest rate fills HEADROOM of the lab."""
    fastest = max(_rate_bps(profile, calibration) for profile in _profiles(spec).values())
    return min(1.0, HEADROOM * lab.ceiling_bps / (spec.max_world_size * fastest))


def derive(spec: MatrixSpec, calibration: Calibration, lab: Lab) -> ScaleModel:
    """The scale model of `spec` (predicted on `calibration`) on `lab`; ConfigError if it
    cannot be carried."""
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
    for axis in ("layouts", "dtypes", "recompute"):
        if getattr(spec.axes, axis) is not None:
            raise ConfigError(
                source, f"axes.{axis}", "a scale model keeps one layout, precision and recompute"
            )
    if spec.trainer.get("tensor", 1) > 1 or "fsdp" in spec.axes.dp_modes:
        raise ConfigError(
            source, "trainer.tensor" if spec.trainer.get("tensor", 1) > 1 else "axes.dp_modes",
            "emulated compute has no tensor-parallel or fully sharded stage",
        )  # fmt: skip
    s = scale_factor(spec, calibration, lab)
    config = spec.trainer_config(spec.cells()[0])
    compute = calibration.compute_for(calibration.workload_for(config))
    trainer = _scaled_trainer(spec, config, compute, calibration, s)
    scaled = {name: _scaled_profile(p, calibration, lab, s) for name, p in profiles.items()}
    lab_profiles = {profile.short(): name for name, profile in scaled.items()}
    if len(lab_profiles) != len(profiles):
        raise ConfigError(source, "axes.profiles", "two profiles scale to the same lab profile")
    tcp, tcp_names = {}, {}
    for name, setting in spec.tcp.items():
        known = tcp_for(setting, calibration.tcp)
        lab_name = f"scaled-{name}"
        tcp[lab_name] = _scaled_tcp(known, calibration, lab, s, source)
        tcp_names[lab_name] = name
    _check_tensors(spec, trainer, source)
    lab_of = {target: lab_name for lab_name, target in lab_profiles.items()}
    lab_tcp = {target: lab_name for lab_name, target in tcp_names.items()}
    targets = []
    for cell in spec.cells():
        config = spec.trainer_config(cell)
        predicted = predict_config(
            config, spec.targets[cell.profile], calibration, None, spec.tcp[cell.tcp]
        )
        targets.append(
            {
                "profile": lab_of[cell.profile],
                "tcp": lab_tcp[cell.tcp],
                "dp_degree": cell.dp_degree,
                "micro_batch": cell.micro_batch,
                "dp_mode": cell.dp_mode,
                "target_profile": cell.profile,
                "predicted_s": predicted["predicted_iteration_s"],
            }
        )
    groups = _groups(spec, config, compute, calibration, lab, trainer, scaled, tcp, tcp_names)
    return ScaleModel(s, trainer, lab_profiles, tcp, tcp_names, groups, targets)


def _profiles(spec: MatrixSpec) -> dict[str, Profile]:
    for name, target in spec.targets.items():
        if not isinstance(target, Profile):
            raise ConfigError(
                str(spec.source), "axes.profiles", f"{name!r} is a pair matrix; a scale model "
                "takes uniform profiles (one shape on every host)",
            )  # fmt: skip
    return dict(spec.targets)


def _rate_bps(profile: Profile, calibration: Calibration) -> float:
    return float(profile.rate_bps or calibration.native.rate_bps)


def _scaled_trainer(
    spec: MatrixSpec,
    config: TrainerConfig,
    compute: StageCompute,
    calibration: Calibration,
    s: float,
) -> dict:
    """The target's trainer table (`config` its first cell, `compute` its stage times) with its
    stages' compute times emulated and tensors scaled."""
    per_sequence = 1000 / config.micro_batch
    trainer = dict(spec.trainer)
    chunk_kb = config.ps_chunk_kb * s
    trainer["ps_chunk_kb"] = round(max(MIN_CHUNK_KB, chunk_kb), 3)
    if config.ps_bucket_mb:
        trainer["ps_bucket_mb"] = config.ps_bucket_mb * s
    if calibration.gpipe_schedule == "reference":
        trainer["gpipe_schedule"] = "reference"
    trainer["emulate"] = {
        "scale": s,
        "forward_ms": [round(t * per_sequence, 4) for t in compute.forward_s],
        "backward_ms": [round(t * per_sequence, 4) for t in compute.backward_s],
        "optimizer_ms": [round(t * 1000, 4) for t in compute.optimizer_s],
    }
    return trainer


def _scaled_profile(profile: Profile, calibration: Calibration, lab: Lab, s: float) -> Profile:
    """The target's one-way latency (native hop plus delay) less the lab's own hop; rate × s."""
    latency_ms = (calibration.native.latency_s - lab.latency_s) * 1000 + profile.delay_ms
    delay_ms = round(max(0.0, latency_ms), 3)
    return profile.model_copy(
        update={
            "name": None,
            "delay_ms": delay_ms,
            "jitter_ms": min(profile.jitter_ms, delay_ms),
            "rate_bps": int(max(1000, round(_rate_bps(profile, calibration) * s, -3))),
            "limit": None,
        }
    )


def _scaled_tcp(
    known: dict | None, calibration: Calibration, lab: Lab, s: float, source: str
) -> TcpSettings:
    """The target's TCP (its connections of `calibration.sockets` sockets behind the backend's
    buffer) as one lab socket with every buffer scaled by s. The receive buffer is sized for
    the lab's kernel: it offers the target's window times s. The lab's backend (gloo) has no
    buffer of its own: its send buffer takes the target's backend buffer too, where that leaves
    the window as it was (the receive buffer the smaller)."""
    if not known or not known.get("rmem") or not known.get("wmem"):
        raise ConfigError(
            source, "axes.tcp", "the target's TCP buffers are unknown: give a TCP setting "
            "(e.g. a preset) or calibrate on hosts whose settings were recorded",
        )  # fmt: skip
    sockets = calibration.sockets
    highs = {name: known[name][2] * sockets * s for name in ("rmem", "wmem")}
    adv_win_scale = known.get("adv_win_scale", 1)
    receive = receive_window(highs["rmem"], adv_win_scale, known.get("receive_share"))
    if lab.receive_share:
        highs["rmem"] = receive / lab.receive_share
    with_backend = highs["wmem"] + calibration.backend_buffer_bytes * s
    if min(receive, with_backend) == min(receive, highs["wmem"]):
        highs["wmem"] = with_backend
    buffers = {}
    for name, high in highs.items():
        scaled = round(high)
        if scaled < MIN_WINDOW_SEGMENTS * MSS_BYTES:
            raise ConfigError(
                source, f"tcp {name}", f"{known[name][2]} B × {sockets} sockets × s = {scaled} B,"
                f" under {MIN_WINDOW_SEGMENTS} segments: the lab cannot carry so small a window",
            )  # fmt: skip
        low, default, _ = known[name]
        buffers[name] = (min(low, scaled), min(default, scaled), scaled)
    initial = (known.get("initcwnd") or KERNEL_INITCWND) * sockets * s
    return TcpSettings(
        congestion_control=known.get("congestion_control"),
        adv_win_scale=known.get("adv_win_scale"),
        slow_start_after_idle=known.get("slow_start_after_idle"),
        initcwnd=max(1, round(initial)),
        **buffers,
    )


def _check_tensors(spec: MatrixSpec, trainer: dict, source: str) -> None:
    for cell in spec.cells():
        config = TrainerConfig(**spec.trainer_config(cell).model_dump() | trainer)
        segments = workload_of(config).activation_bytes / MSS_BYTES
        if segments < MIN_TENSOR_SEGMENTS:
            raise ConfigError(
                source, "axes.micro_batches", f"a scaled activation of micro-batch "
                f"{cell.micro_batch} fills {segments:.1f} segments, under {MIN_TENSOR_SEGMENTS}",
            )  # fmt: skip


def _groups(
    spec, target_config, compute, calibration, lab, trainer, scaled, tcp, tcp_names
) -> list[dict]:
    """The dimensionless groups that shape the slowdown curve, target against lab, per profile
    (and TCP setting where it matters), with the cost model's own TCP terms."""
    lab_config = TrainerConfig(**target_config.model_dump() | trainer)
    target_work, lab_work = workload_of(target_config), workload_of(lab_config)
    forward_s = float(compute.forward_s[0])
    target_largest = max(float(b.max()) for b in target_work.sync_buckets)
    lab_largest = max(float(b.max()) for b in lab_work.sync_buckets)
    rows = []
    for target_name, lab_p in scaled.items():
        target_p = spec.targets[target_name]
        t_rate = _rate_bps(target_p, calibration) / 8
        l_rate = lab_p.rate_bps / 8
        t_lat = calibration.native.latency_s + target_p.delay_ms / 1000
        l_lat = lab.latency_s + lab_p.delay_ms / 1000
        pairs = [
            ("activation hop / forward", target_work.activation_bytes / t_rate / forward_s,
             lab_work.activation_bytes / l_rate / forward_s),
            ("one-way latency / forward", t_lat / forward_s, l_lat / forward_s),
            ("gradient sync / forward", target_work.grad_bytes.max() / t_rate / forward_s,
             lab_work.grad_bytes.max() / l_rate / forward_s),
            ("sync chunk / largest gradient", target_work.chunk_bytes / target_largest,
             lab_work.chunk_bytes / lab_largest),
        ]  # fmt: skip
        if target_p.rate_bps is not None:  # what a shaped link lets through at once after idle
            pairs.append((
                "shaper burst / activation",
                burst_bytes(target_p.rate_bps) / target_work.activation_bytes,
                burst_bytes(lab_p.rate_bps) / lab_work.activation_bytes,
            ))  # fmt: skip
        for lab_tcp, target_tcp in tcp_names.items():
            known = tcp_for(spec.tcp[target_tcp], calibration.tcp)
            t_side = tcp_side([known], calibration.sockets, calibration.backend_buffer_bytes)
            l_side = tcp_side([lab.tcp(tcp[lab_tcp])])
            t_window, l_window = float(t_side.window(ONE, ONE)), float(l_side.window(ONE, ONE))
            t_buffered, l_buffered = (
                float(t_side.buffered_bytes(ONE)),
                float(l_side.buffered_bytes(ONE)),
            )
            t_initial, l_initial = (
                float(t_side.initial_bytes(ONE)),
                float(l_side.initial_bytes(ONE)),
            )
            suffix = "" if len(tcp_names) == 1 else f" (TCP {target_tcp})"
            pairs += [
                (f"window / bandwidth-delay product{suffix}", t_window / (t_rate * 2 * t_lat),
                 l_window / (l_rate * 2 * l_lat)),
                (f"send buffers / activation{suffix}", t_buffered / target_work.activation_bytes,
                 l_buffered / lab_work.activation_bytes),
                (f"initial window / activation{suffix}",
                 t_initial / target_work.activation_bytes,
                 l_initial / lab_work.activation_bytes),
            ]  # fmt: skip
        for group, target_value, lab_value in pairs:
            kept = math.isclose(lab_value, target_value, rel_tol=GROUP_TOLERANCE)
            if group.startswith("window"):  # a window over the BDP limits neither: same regime
                kept = kept or min(target_value, lab_value) >= 1
            rows.append(
                {
                    "profile": target_name,
                    "group": group,
                    "target": target_value,
                    "local": lab_value,
                    "kept": kept,
                }
            )
    return rows
