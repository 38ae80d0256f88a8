"""The scale-model derivation: what the lab keeps of the target, checked from the matrix it writes
(read back as any matrix is), and the targets it refuses with the reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w

from experiments.costmodel.calibrate import workload_of
from experiments.costmodel.reference import reference_calibration
from experiments.costmodel.tcp import MSS_BYTES, receive_window
from experiments.matrix import load_matrix
from experiments.scale import (
    HEADROOM,
    MIN_CHUNK_KB,
    Lab,
    baseline_profile,
    derive,
    scaled_matrix,
)
from inventory.errors import ConfigError
from netem.profile import parse_profile

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "experiments" / "matrices" / "seed-gpt3xl.toml"
LAB = Lab(latency_s=0.35e-3, ceiling_bps=500e6, receive_share=0.72)  # a kernel from 6.6


LAB_SHARE = 1448 / 1514
"""The payload share of the lab's shaped rate (MTU 1,500)."""


def payload_bps(profile, calibration) -> float:
    """The target hop's data rate: its shaped rate's payload at MTU 9,001, at most native."""
    native = calibration.native.rate_bps
    return native if profile.rate_bps is None else min(profile.rate_bps * 8949 / 9015, native)


def lab_rate_per_s(profile, calibration) -> float:
    """The lab's shaped rate per unit of s that carries the target's data rate."""
    return payload_bps(profile, calibration) / LAB_SHARE


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    spec, calibration = load_matrix(SEED), reference_calibration()
    model = derive(spec, calibration, LAB)
    out = tmp_path_factory.mktemp("scale") / "scaled.toml"
    out.write_text(tomli_w.dumps(scaled_matrix(model, spec, calibration, 3, 1)))
    return spec, calibration, model, load_matrix(out)


def test_each_profiles_factor_fits_every_rank_sending_at_once_into_the_lab(scaled):
    spec, calibration, model, lab = scaled
    for name, scale in model.scales.items():
        rate = lab_rate_per_s(spec.targets[name], calibration)
        most = HEADROOM * LAB.ceiling_bps / (48 * rate)
        assert scale.factor <= most * (1 + 1e-9)
        # lowered only to make the initial window whole, which costs less than half of it
        assert scale.factor > most / 2
    # the unshaped network's initial window is a fraction of a segment at any s the lab carries
    assert model.scales["default"].factor == pytest.approx(
        HEADROOM * 500e6 / (48 * calibration.native.rate_bps / LAB_SHARE)
    )
    for cell in lab.cells():
        peak = lab.max_world_size * lab.targets[cell.profile].rate_bps
        assert peak <= HEADROOM * LAB.ceiling_bps * 1.001


def test_the_scale_models_cells_hold_their_shaping_for_the_labs_long_iterations(scaled):
    spec, _, _, lab = scaled
    assert spec.timeouts.lease_s == 30.0  # the target's own
    assert lab.timeouts.lease_s == 300.0  # the most a matrix may ask for


def test_a_profiles_factor_makes_the_targets_initial_window_whole_where_it_can(scaled):
    spec, calibration, model, lab = scaled
    # the reference's hosts: initcwnd 10 of 8,949-byte segments (MTU 9,001) on 16 sockets,
    # in the lab's 1,448-byte segments
    initial_bytes = 10 * 8949 * 16
    segments = initial_bytes / MSS_BYTES
    activation = workload_of(spec.trainer_config(spec.cells()[0])).activation_bytes
    whole = 0
    for lab_cell, scale_cell in zip(lab.cells(), lab.scale.cells, strict=True):
        s = model.scales[scale_cell.target_profile].factor
        if segments * s < 1:
            continue  # under one segment at the most the lab carries: reported, not kept
        whole += 1
        initcwnd = lab.tcp_settings(lab_cell).initcwnd
        assert initcwnd == pytest.approx(segments * s, abs=1e-6)
        lab_activation = workload_of(lab.trainer_config(lab_cell)).activation_bytes
        assert initcwnd * MSS_BYTES / lab_activation == pytest.approx(
            initial_bytes / activation, rel=1e-3
        )
    assert whole == 8  # every shaped profile at both DP degrees (the unshaped one is too fast)


def test_topology_schedule_and_compute_are_the_targets(scaled):
    spec, calibration, model, lab = scaled
    assert lab.axes.dp_degrees == spec.axes.dp_degrees == [1, 4]
    assert lab.axes.micro_batches == spec.axes.micro_batches
    assert lab.axes.dp_modes == spec.axes.dp_modes
    for target_cell, lab_cell in zip(spec.cells(), lab.cells(), strict=True):
        target, local = spec.trainer_config(target_cell), lab.trainer_config(lab_cell)
        assert (local.pipeline, local.world_size, local.n_micro) == (
            target.pipeline, target.world_size, target.n_micro,
        )  # fmt: skip
        assert local.gpipe_schedule == "reference" and local.emulate is not None
        compute = calibration.compute_for(calibration.workload_for(target))
        for stage in range(target.pipeline):
            forward, backward, optimizer = local.emulate.stage_seconds(
                stage, local.pipeline, local.micro_batch
            )
            assert forward == pytest.approx(compute.forward_s[stage], rel=1e-4)
            assert backward == pytest.approx(compute.backward_s[stage], rel=1e-4)
            assert optimizer == pytest.approx(compute.optimizer_s[stage], rel=1e-3)


def test_every_transfer_and_window_takes_the_targets_time(scaled):
    spec, calibration, model, lab = scaled
    target_work = workload_of(spec.trainer_config(spec.cells()[0]))
    ubuntu = calibration.tcp
    target_window = min(receive_window(ubuntu["rmem"][2], ubuntu["adv_win_scale"]),
                        ubuntu["wmem"][2]) * calibration.backend.sockets  # fmt: skip
    sends = ubuntu["wmem"][2] * calibration.backend.sockets + calibration.backend.p2p_buffer_bytes
    for lab_cell, scale_cell in zip(lab.cells(), lab.scale.cells, strict=True):
        target_name = scale_cell.target_profile
        s = model.scales[target_name].factor
        lab_work = workload_of(lab.trainer_config(lab_cell))
        assert lab.trainer_config(lab_cell).emulate.scale == s
        lab_tcp = lab.tcp_settings(lab_cell)
        # the lab's kernel offers 0.72 of a receive buffer as window, the target's half of it
        window = min(lab_tcp.rmem[2] * LAB.receive_share, lab_tcp.wmem[2])
        assert window == pytest.approx(target_window * s, rel=1e-4)
        assert lab_tcp.wmem[2] == pytest.approx(sends * s, abs=1)
        target, local = spec.targets[target_name], parse_profile(lab_cell.profile)
        target_rate = payload_bps(target, calibration)  # what carries data: MTU 9,001
        lab_rate = local.rate_bps * LAB_SHARE  # the lab's shaper counts 1,514-byte frames
        # an activation hop and a stage's gradients take the same seconds in both
        hop = target_work.activation_bytes * 8 / target_rate
        assert lab_work.activation_bytes * 8 / lab_rate == pytest.approx(hop, rel=2e-3)
        sync = target_work.grad_bytes * 8 / target_rate
        assert lab_work.grad_bytes * 8 / lab_rate == pytest.approx(sync, rel=2e-3)
        # the one-way latency is the target's wherever the lab's own hop is shorter
        target_latency = calibration.native.latency_s + target.delay_ms / 1000
        if target_latency > LAB.latency_s:
            lab_latency = LAB.latency_s + local.delay_ms / 1000
            assert lab_latency == pytest.approx(target_latency, abs=1e-6)
            # a delay node takes its own hop out of each delay itself: asked for in full
            whole = replace(LAB, delays_whole=True)
            assert whole.delay_ms_for(target_latency) == pytest.approx(target_latency * 1000)
            assert whole.one_way_s(whole.delay_ms_for(target_latency)) == pytest.approx(
                target_latency
            )
        assert local.loss_pct == target.loss_pct


def test_the_groups_say_what_the_lab_cannot_keep(scaled):
    spec, calibration, model, lab = scaled
    kept = {(row["profile"], row["group"]): row["kept"] for row in model.groups}
    assert all(kept[(p, "activation hop / forward")] for p in spec.axes.profiles)
    assert all(kept[(p, "gradient sync / forward")] for p in spec.axes.profiles)
    assert not kept[("default", "one-way latency / forward")]  # the lab's own hop is longer
    assert kept[("d50b1", "window / bandwidth-delay product")]
    # the lab's one socket buffers what the target's 16 sockets and NCCL's buffer held
    assert all(kept[(p, "send buffers / activation")] for p in spec.axes.profiles)
    # 16 sockets' initial windows of 10 jumbo segments are 988.8 of the lab's segments: × s
    # under one at 10 Gbit/s, where the lab starts with more than its share; from 5 Gbit/s on
    # the factor makes them whole
    assert not kept[("default", "initial window / activation")]
    assert all(kept[(p, "initial window / activation")] for p in ("d1b5", "d5b2", "d50b1"))
    [lab_tcp] = lab.tcp.values()  # [tcp]: the baseline profile's factor
    assert lab_tcp.initcwnd == 1 and 10 * 16 * 8949 / 1448 * model.scales["default"].factor < 1
    # NCCL's 512 KiB steps would scale to a few KiB; the lab's chains send larger pieces
    for scale in model.scales.values():
        assert scale.tensors["ps_chunk_kb"] == MIN_CHUNK_KB and 512 * scale.factor < MIN_CHUNK_KB
    assert not kept[("d50b1", "sync chunk / largest gradient")]
    # HTB's burst is 4 ms at the rate, at least two frames: the larger factor of a slower
    # profile keeps two frames within 4 ms at its lab rate
    assert kept[("d50b1", "shaper burst / activation")]
    assert ("default", "shaper burst / activation") not in kept  # no shaper on that network


def test_every_lab_cell_names_its_target_and_prediction(scaled):
    spec, calibration, model, lab = scaled
    assert lab.scale is not None and lab.scale.factor == model.scales["default"].factor
    own = {name: p.factor for name, p in lab.scale.profiles.items()}
    assert own == {
        scale.profile.short(): scale.factor
        for scale in model.scales.values()
        if scale.factor != lab.scale.factor
    }
    assert lab.scale.baseline_profile == baseline_profile(spec) == "default"
    named = {(c.profile, c.tcp, c.dp_degree, c.micro_batch, c.dp_mode) for c in lab.scale.cells}
    cells = {(c.profile, c.tcp, c.dp_degree, c.micro_batch, c.dp_mode) for c in lab.cells()}
    assert named == cells
    default_dp1 = next(
        c for c in lab.scale.cells if c.target_profile == "default" and c.dp_degree == 1
    )
    assert default_dp1.predicted_s == pytest.approx(15.16, rel=1e-3)  # what it was fitted on


def write_target(tmp_path: Path, profiles: list[str], engines=("gpipe",)) -> Path:
    path = tmp_path / "target.toml"
    text = SEED.read_text().replace('inventory = "../../inventory/examples/p3-2xlarge-48.toml"',
                                    'inventory = "local"')  # fmt: skip
    text = text.replace(
        'profiles = ["default", "d1b5", "d5b2", "d10b1", "d50b1"]',
        "profiles = " + repr(profiles).replace("'", '"'),
    ).replace('engines = ["gpipe"]', "engines = " + repr(list(engines)).replace("'", '"'))
    if tuple(engines) != ("gpipe",):  # the reference's schedule is the gpipe engine's
        text = text.replace('gpipe_schedule = "reference"\n', "")
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("lab", "profiles", "engines", "field", "words"),
    [
        (Lab(0.35e-3, 500e6, max_hosts=40), ["default"], ("gpipe",), "axes.dp_degrees", "48"),
        (Lab(0.35e-3, 2e6), ["default"], ("gpipe",), "tcp rmem", "segments"),
        (LAB, ["default"], ("pipelining-gpipe",), "axes.engines", "gpipe"),
    ],
)
def test_a_target_the_lab_cannot_carry_is_refused_with_the_reason(
    tmp_path, lab, profiles, engines, field, words
):
    spec = load_matrix(write_target(tmp_path, profiles, engines))
    with pytest.raises(ConfigError) as caught:
        derive(spec, reference_calibration(), lab)
    assert caught.value.field == field and words in caught.value.message


def test_a_pair_matrix_target_is_refused(tmp_path):
    pairs = tmp_path / "pairs.toml"
    pairs.write_text(
        'by = "name"\n[[link]]\nsrc = "h0"\ndst = "h1"\ndelay = "5ms"\nrate = "1gbit"\n'
    )
    spec = load_matrix(write_target(tmp_path, ["pairs.toml"]))
    with pytest.raises(ConfigError) as caught:
        derive(spec, reference_calibration(), LAB)
    assert caught.value.field == "axes.profiles" and "pair matrix" in caught.value.message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("pipeline = 12\n", "", "axes.layouts"),  # with a layouts axis instead
        ('dp_modes = ["ps"]', 'dp_modes = ["fsdp"]', "axes.dp_modes"),
        ("pipeline = 12", "pipeline = 12\ntensor = 2", "trainer.tensor"),
    ],
)
def test_a_target_with_layouts_or_sharded_stages_is_refused(tmp_path, old, new, field):
    path = write_target(tmp_path, ["default"])
    text = path.read_text().replace(old, new)
    if field == "axes.layouts":
        text = text.replace('dp_modes = ["ps"]', 'dp_modes = ["ps"]\nlayouts = ["tp1-pp12"]')
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        derive(load_matrix(path), reference_calibration(), LAB)
    assert caught.value.field == field


def _own_factor(data: dict) -> str:
    return next(iter(data["scale"]["profiles"]))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d, p: d["scale"]["profiles"].update({"7ms/1mbit": d["scale"]["profiles"][p]}),
         "scale.profiles.7ms/1mbit"),
        (lambda d, p: d["scale"]["profiles"][p].update(tcp={}), "scale.profiles.{p}.tcp"),
        (lambda d, p: d["scale"]["profiles"][p]["trainer"].update(dp_degree=2),
         "scale.profiles.{p}.trainer.dp_degree"),
        (lambda d, p: d["trainer"].pop("emulate"), "scale.profiles.{p}"),
    ],
)  # fmt: skip
def test_a_profile_with_its_own_factor_is_checked_like_the_rest(scaled, tmp_path, edit, field):
    spec, calibration, model, _ = scaled
    data = scaled_matrix(model, spec, calibration, 3, 1)
    profile = _own_factor(data)
    edit(data, profile)
    path = tmp_path / "scaled.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_matrix(path)
    assert caught.value.field == field.format(p=profile)


def test_a_target_with_a_users_job_is_refused(tmp_path):
    path = write_target(tmp_path, ["default"])
    (tmp_path / "job.py").write_text("")
    text = path.read_text().replace(
        'dp_modes = ["ps"]', 'dp_modes = ["ps"]\nworkloads = ["trainer", "job"]'
    )
    path.write_text(
        text
        + '\n[workloads.job]\ncommand = ["{python}", "job.py"]\ntiming = "jsonl"\niterations = 3\n'
    )
    with pytest.raises(ConfigError) as caught:
        derive(load_matrix(path), reference_calibration(), LAB)
    assert caught.value.field == "axes.workloads"
