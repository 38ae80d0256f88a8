"""Emulated compute: the stage holds for its times, moves the tensors the cost model counts, and
trains through the real pipeline and gradient sync over gloo."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch
from trainer_workers import launch_cli

from experiments.costmodel.calibrate import emulated_compute, workload_of
from experiments.localranks import finish
from inventory.errors import ConfigError
from trainer.config import TrainerConfig, load_config
from trainer.emulated import EmulatedStage
from trainer.model import CONFIGS
from trainer.partition import Stage


def emulated(**emulate) -> TrainerConfig:
    return TrainerConfig(
        model="gpt3-xl", batch=4, pipeline=3, micro_batch=2,
        emulate={"forward_ms": [10.0], "backward_ms": [20.0]} | emulate,
    )  # fmt: skip


def stages_of(cfg: TrainerConfig) -> list[EmulatedStage]:
    return [
        EmulatedStage(cfg.gpt, s, cfg.pipeline, cfg.layers, cfg.seq, cfg.emulate.scale, 0, 0)
        for s in range(cfg.pipeline)
    ]


def test_unscaled_stages_have_the_real_stages_tensors():
    gpt = CONFIGS["tiny"]
    for s in range(3):
        real = [p.shape.numel() for p in Stage(gpt, s, 3).parameters()]
        fake = [p.shape.numel() for p in EmulatedStage(gpt, s, 3, None, 32, 1.0, 0, 0).parameters()]
        assert fake == real


@pytest.mark.parametrize("scale", [1e-2, 1e-3, 3e-6])
def test_scaled_stages_move_what_the_cost_model_counts(scale):
    cfg = emulated(scale=scale)
    workload = workload_of(cfg)
    stages = stages_of(cfg)
    params = [sum(p.numel() for p in stage.parameters()) for stage in stages]
    assert params == list(workload.stage_params)
    real = TrainerConfig(model="gpt3-xl", batch=4, pipeline=3, micro_batch=2)
    tensors = sum(len(list(stage.parameters())) for stage in stages)
    # each tensor rounds to the nearest element, and to at least one
    assert abs(sum(params) - workload_of(real).stage_params.sum() * scale) <= tensors
    shape = stages[0].activation_shape(cfg.micro_batch)
    assert shape[0] == cfg.micro_batch
    assert shape.__len__() == 2 and 4 * shape[0] * shape[1] == workload.activation_bytes
    assert abs(workload.activation_bytes - 4 * 2 * 2048 * 2048 * scale) <= 4 * 2


def test_stage_times_follow_the_micro_batch_and_the_per_stage_lists():
    cfg = emulated(scale=1e-3, forward_ms=[1.0, 2.0, 3.0], optimizer_ms=[7.0])
    compute = emulated_compute(cfg)
    assert list(compute.forward_s) == pytest.approx([0.002, 0.004, 0.006])
    assert list(compute.backward_s) == pytest.approx([0.04] * 3)
    assert list(compute.optimizer_s) == pytest.approx([0.007] * 3)


def test_a_stage_holds_for_its_time_within_two_percent():
    forward_s, backward_s = 0.1, 0.2
    gpt = CONFIGS["gpt3-xl"]
    stage = EmulatedStage(gpt, 1, 3, None, 2048, 1e-3, forward_s, backward_s)
    held = {"forward": [], "backward": []}
    for _ in range(6):
        x = torch.ones(stage.activation_shape(1), requires_grad=True)
        start = time.perf_counter()
        y = stage(x)
        mid = time.perf_counter()
        y.backward(torch.ones_like(y))
        end = time.perf_counter()
        held["forward"].append(mid - start)
        held["backward"].append(end - mid)
        assert x.grad.shape == x.shape
    held = {phase: times[1:] for phase, times in held.items()}  # the first starts autograd
    for phase, wanted in (("forward", forward_s), ("backward", backward_s)):
        assert min(held[phase]) >= wanted, held
        # the hold sleeps to its deadline: late only by the OS's wake-up, which load stretches
        assert statistics.median(held[phase]) <= 1.02 * wanted, held


@pytest.mark.parametrize(
    ("emulate", "engine", "field"),
    [
        ({"scale": 0.0, "forward_ms": [1], "backward_ms": [1]}, "gpipe", "emulate.scale"),
        (
            {"scale": 0.1, "forward_ms": [1, 2, 3], "backward_ms": [1]},
            "gpipe",
            "emulate.forward_ms",
        ),
        ({"scale": 0.1, "forward_ms": [-1], "backward_ms": [1]}, "gpipe", "emulate.forward_ms[0]"),
        ({"scale": 0.1, "forward_ms": [1], "backward_ms": [1]}, "pipelining-gpipe", "emulate"),
        ({"scale": 0.1, "forward_ms": [1]}, "gpipe", "emulate.backward_ms"),
    ],
)
def test_bad_emulation_names_its_field(emulate, engine, field):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"pipeline": 2, "engine": engine, "emulate": emulate})
    assert caught.value.field == field


def test_an_emulated_run_trains_over_the_real_pipeline_and_sync(tmp_path):
    config = tmp_path / "emulated.toml"
    config.write_text(
        'model = "gpt3-xl"\nbatch = 4\npipeline = 2\ndp_degree = 2\niterations = 3\n'
        "[emulate]\nscale = 1e-3\nforward_ms = [20.0, 30.0]\nbackward_ms = [40.0]\n"
        "optimizer_ms = [10.0]\n"
    )
    results = finish(launch_cli(4, ["--config", str(config), "--iface", "lo"]), timeout=150)
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert summary["config"]["emulate"]["scale"] == 1e-3
    for stage in summary["stages"]:
        forward = (0.020, 0.030)[stage["stage"]]
        # the engine's forward also posts its sends: a little over the hold, never under
        assert forward <= stage["forward_per_micro_s"] <= 1.25 * forward, stage
        assert 0.040 <= stage["backward_per_micro_s"] <= 1.25 * 0.040, stage
        assert 0.010 <= stage["mean_s"]["optimizer_s"] <= 1.25 * 0.010, stage
        assert stage["mean_s"]["ps_sync_s"] > 0
