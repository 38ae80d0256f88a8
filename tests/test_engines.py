"""The engines against the unpartitioned model, in real processes over gloo on 127.0.0.1.

Our GPipe and the two `torch.distributed.pipelining` schedules train the same stages on the same
data with the same optimizer; after a few iterations each must have the losses and weights of
the whole model trained on the whole batch in one process.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from trainer_workers import _join, launch_cli, spawn

from experiments.localranks import finish
from inventory.errors import ConfigError
from trainer.config import ENGINES, DType, TrainerConfig, load_config
from trainer.data import TokenSource
from trainer.engines import DTYPES, LIBRARY_SCHEDULES, OURS, measured_phases
from trainer.model import GPT
from trainer.pipelining import SCHEDULES
from trainer.timing import PHASES
from trainer.train import RankTrainer, make_optimizer

CPU = torch.device("cpu")
SEED = 5
ITERATIONS = 3
BASE = dict(
    model="tiny", batch=4, micro_batch=1, seq_len=16, seed=SEED, iterations=ITERATIONS,
    optimizer="sgd", lr=0.5,
)  # fmt: skip


def train_each_engine(rank, world_size, port, out_dir, base, runs):
    """Per (engine, dp_mode): a fresh stage trained ITERATIONS steps; save losses and weights."""
    _join(rank, world_size, port)
    for engine, mode in runs:
        trainer = RankTrainer(TrainerConfig(**base, engine=engine, dp_mode=mode), rank, CPU)
        records = [trainer.step(i) for i in range(ITERATIONS)]
        state = {
            "losses": [r.loss for r in records],
            "pipeline_s": [r.pipeline_s for r in records],
            "stage": trainer.stage_index,
            "replica": trainer.replica,
            "params": {n: p.detach().clone() for n, p in trainer.module.named_parameters()},
        }
        torch.save(state, Path(out_dir) / f"{engine}-{mode}-r{rank}.pt")
    dist.destroy_process_group()


def reference_run(cfg: TrainerConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses and final weights of the whole model trained on every replica's batch at once."""
    model = GPT(cfg.gpt, seed=cfg.seed)
    optimizer = make_optimizer(cfg, model.parameters())
    source = TokenSource(cfg.dataset, cfg.gpt.vocab_size, cfg.seq, cfg.seed)
    losses = []
    for iteration in range(ITERATIONS):
        batches = [source.batch(iteration, r, cfg.batch) for r in range(cfg.dp_degree)]
        _, loss = model(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {n: p.detach() for n, p in model.named_parameters()}


def check_against_reference(out_dir: Path, cfg: TrainerConfig, runs) -> None:
    expected_losses, expected_params = reference_run(cfg)
    for engine, mode in runs:
        ranks = [torch.load(out_dir / f"{engine}-{mode}-r{r}.pt") for r in range(cfg.world_size)]
        last = [r for r in ranks if r["stage"] == cfg.pipeline - 1]
        losses = [sum(r["losses"][i] for r in last) / cfg.dp_degree for i in range(ITERATIONS)]
        assert losses == pytest.approx(expected_losses, rel=1e-5), (engine, mode)
        assert all(r["losses"] == [None] * ITERATIONS for r in ranks if r not in last)
        assert all(t > 0 for r in ranks for t in r["pipeline_s"]), (engine, mode)
        names = set()
        for r in ranks:
            for name, param in r["params"].items():
                msg = f"{engine}/{mode} rank stage {r['stage']} replica {r['replica']}: {name}"
                torch.testing.assert_close(
                    param, expected_params[name], rtol=1e-4, atol=1e-5, msg=msg
                )
                names.add(name)
        assert names == expected_params.keys()


def test_the_config_offers_exactly_the_engines_and_dtypes_the_trainer_runs():
    field = TrainerConfig.model_fields["engine"]
    assert typing.get_args(field.annotation) == ENGINES
    assert field.default == OURS
    assert (OURS, *LIBRARY_SCHEDULES) == ENGINES
    assert tuple(SCHEDULES) == LIBRARY_SCHEDULES  # each library schedule has its class
    assert tuple(DTYPES) == typing.get_args(DType)  # each precision has its torch dtype
    assert measured_phases("gpipe") == list(PHASES)
    assert measured_phases("pipelining-1f1b") == [
        "total_s", "pipeline_s", "ps_sync_s", "optimizer_s"
    ]  # fmt: skip


def test_every_engine_trains_two_stages_like_the_whole_model(tmp_path):
    base = BASE | dict(pipeline=2)
    runs = [(engine, "ps") for engine in ENGINES]
    spawn(train_each_engine, 2, str(tmp_path), base, runs)
    check_against_reference(tmp_path, TrainerConfig(**base), runs)


def test_engines_with_two_pipelines_train_like_the_whole_model_on_both_batches(tmp_path):
    base = BASE | dict(pipeline=2, dp_degree=2)
    runs = [("gpipe", "ps"), ("pipelining-gpipe", "ps"), ("pipelining-1f1b", "allreduce")]
    spawn(train_each_engine, 4, str(tmp_path), base, runs)
    check_against_reference(tmp_path, TrainerConfig(**base), runs)
    for engine, mode in runs:
        ranks = [torch.load(tmp_path / f"{engine}-{mode}-r{r}.pt") for r in range(4)]
        for stage in range(2):
            for name, param in ranks[stage]["params"].items():
                torch.testing.assert_close(param, ranks[2 + stage]["params"][name], rtol=0, atol=0)


def test_one_f_one_b_with_fewer_micro_batches_than_stages_fails_fast_naming_the_field():
    flags = ["--pipeline", "4", "--model", "tiny", "--engine", "pipelining-1f1b", "--batch", "2"]
    results = finish(launch_cli(4, flags), timeout=60)
    for code, _, err in results:
        assert code == 2, err
        assert ": engine: " in err and "micro-batches" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (dict(engine="pipelining-1f1b", pipeline=3, batch=4, micro_batch=2), "engine"),
        (dict(engine="pipelining-gpipe", warmup=0), "warmup"),
        (dict(engine="pipedream"), "engine"),
    ],
)
def test_bad_engine_settings_name_the_field(given, field):
    with pytest.raises(ConfigError) as caught:
        load_config(None, dict(model="tiny") | given)
    assert caught.value.field == field
    assert load_config(None, dict(model="tiny", pipeline=3, batch=3, engine="pipelining-1f1b"))


def test_cli_runs_a_library_schedule_and_says_which_phases_it_measured(tmp_path):
    out = tmp_path / "run"
    flags = ["--model", "tiny", "--pipeline", "2", "--batch", "4", "--iterations", "3",
             "--seq-len", "16", "--iface", "lo", "--engine", "pipelining-1f1b",
             "--out", str(out)]  # fmt: skip
    results = finish(launch_cli(2, flags), timeout=120)
    assert [code for code, _, _ in results] == [0, 0], results
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == summary["config"]["engine"] == "pipelining-1f1b"
    assert summary["phases_measured"] == measured_phases("pipelining-1f1b")
    lines = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert 0 < line["pipeline_s"] <= line["total_s"]
        assert line["forward_s"] == line["backward_s"] == line["comm_wait_s"] == 0
