"""How well a scale model keeps its target: the dimensionless groups that shape the slowdown
curve (a transfer, a latency, a sync, a chunk, a shaper's burst, a TCP window or buffer over the
time or size it competes with), target against lab, per profile."""

from __future__ import annotations

import math

from experiments.costmodel.calibrate import Calibration, workload_of
from experiments.costmodel.predict import tcp_for
from experiments.costmodel.tcp import mss_of, payload_share, tcp_side
from netem.profile import Profile
from netem.tree import burst_bytes
from trainer.config import TrainerConfig

ONE = 0
"""The only host of a one-host TcpSide."""
GROUP_TOLERANCE = 0.02
"""A group counts as kept when the lab's value is within this of the target's."""


def payload_bps(profile: Profile, calibration: Calibration) -> float:
    """The data rate of the target's hop under `profile`: its shaped rate's payload share at the
    target's MTU (the shaper counts headers), at most the native rate (payload, as probed)."""
    native = calibration.native
    if profile.rate_bps is None:
        return float(native.rate_bps)
    return min(profile.rate_bps * payload_share(native.mtu), native.rate_bps)


def dimensionless_groups(
    spec, target_config, compute, calibration, lab, trainer, scales, tcp_names
):
    """The dimensionless groups that shape the slowdown curve, target against lab, per profile
    (and TCP setting where it matters), with the cost model's own TCP terms."""
    target_work = calibration.workload_for(target_config)
    forward_s = float(compute.forward_s[0])
    target_largest = max(float(b.max()) for b in target_work.sync_buckets)
    rows = []
    for target_name, scale in scales.items():
        lab_config = TrainerConfig(**target_config.model_dump() | scale.lab_trainer(trainer))
        lab_work = workload_of(lab_config)
        lab_largest = max(float(b.max()) for b in lab_work.sync_buckets)
        target_p, lab_p, tcp = spec.targets[target_name], scale.profile, scale.tcp
        t_rate = payload_bps(target_p, calibration) / 8
        l_rate = lab_p.rate_bps * payload_share(lab.mtu) / 8
        t_lat = calibration.native.latency_s + target_p.delay_ms / 1000
        l_lat = lab.one_way_s(lab_p.delay_ms)
        pairs = [
            ("activation hop / forward", target_work.activation_bytes / t_rate / forward_s,
             lab_work.activation_bytes / l_rate / forward_s),
            ("one-way latency / forward", t_lat / forward_s, l_lat / forward_s),
            ("gradient sync / forward", target_work.grad_bytes.max() / t_rate / forward_s,
             lab_work.grad_bytes.max() / l_rate / forward_s),
            ("sync chunk / largest gradient", target_work.chunk_bytes / target_largest,
             lab_work.chunk_bytes / lab_largest),
        ]  # fmt: skip
        if target_p.rate_bps is not None:  # the data a shaped link lets through at once
            target_burst = burst_bytes(target_p.rate_bps) * payload_share(calibration.native.mtu)
            lab_burst = burst_bytes(lab_p.rate_bps) * payload_share(lab.mtu)
            pairs.append((
                "shaper burst / activation",
                target_burst / target_work.activation_bytes,
                lab_burst / lab_work.activation_bytes,
            ))  # fmt: skip
        for lab_tcp, target_tcp in tcp_names.items():
            known = tcp_for(spec.tcp[target_tcp], calibration.tcp)
            t_side = tcp_side(
                [known], mss=mss_of(calibration.native.mtu), backend=calibration.backend
            )
            l_side = tcp_side([lab.tcp(tcp[lab_tcp])], mss=lab.mss)
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
