"""One rank's training run: build its stage, run the iterations, time them, report on rank 0."""

from __future__ import annotations

import json
import platform
import socket
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from inventory.safewrite import open_append, write_file
from trainer.config import TrainerConfig
from trainer.data import TokenSource
from trainer.dataparallel import make_gradient_sync
from trainer.emulated import EmulatedStage, HeldOptimizer
from trainer.engines import make_engine, measured_phases
from trainer.partition import Stage
from trainer.tensorparallel import join_tensor_group, shard_stage, tensor_groups
from trainer.timing import Clock, IterationTimes, summarize


def make_optimizer(cfg: TrainerConfig, params, stage_index: int = 0):
    """The optimizer every replica of a stage runs on the averaged gradients (under emulated
    compute, one that holds for the stage's optimizer time)."""
    if cfg.emulate is not None:
        _, _, seconds = cfg.emulate.stage_seconds(stage_index, cfg.pipeline, cfg.micro_batch)
        return HeldOptimizer(seconds)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)


def build_rank_stage(cfg: TrainerConfig, rank: int, device: torch.device) -> Stage | EmulatedStage:
    """This rank's stage of the model (or its emulation; its tensor shard), on `device` (no
    communication)."""
    position = cfg.layout.position(rank)
    if cfg.emulate is not None:
        forward_s, backward_s, _ = cfg.emulate.stage_seconds(
            position.stage, cfg.pipeline, cfg.micro_batch
        )
        stage = EmulatedStage(
            cfg.gpt, position.stage, cfg.pipeline, cfg.layers, cfg.seq, cfg.emulate.scale,
            forward_s, backward_s,
        )  # fmt: skip
    else:
        stage = Stage(cfg.gpt, position.stage, cfg.pipeline, cfg.layers, cfg.seed, cfg.recompute)
        shard_stage(stage, position.shard, cfg.tensor)
    return stage.to(device)


class RankTrainer:
    """The stage (its tensor shard), engine (the pipeline schedule), gradient sync and optimizer
    of one rank."""

    def __init__(
        self,
        cfg: TrainerConfig,
        rank: int,
        device: torch.device,
        module: Stage | EmulatedStage | None = None,
    ):
        """Wire the rank up (collective: the process group must be up). `module` is the rank's
        stage when it was built beforehand (`build_rank_stage`)."""
        self.cfg, self.rank, self.device = cfg, rank, device
        self.position = cfg.layout.position(rank)
        self.stage_index, self.replica = self.position.stage, self.position.replica
        self.module = module if module is not None else build_rank_stage(cfg, rank, device)
        if cfg.tensor > 1:
            groups = tensor_groups(cfg.layout)
            join_tensor_group(self.module, groups[self.stage_index, self.replica])
        self.pipe = make_engine(cfg, self.module, self.position, device)
        self.sync = make_gradient_sync(
            cfg.dp_mode, self.pipe.module, cfg.layout, self.position,
            bucket_bytes=cfg.ps_bucket_bytes, chunk_bytes=int(cfg.ps_chunk_kb * 1024),
        )  # fmt: skip
        self.params = list(self.module.parameters())  # under fsdp, this replica's shards
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.loss_scale = cfg.applied_loss_scale
        if cfg.dp_mode == "fsdp" and cfg.engine == "gpipe":
            self.pipe.before_backward = self.sync.before_backward
        self.optimizer = make_optimizer(cfg, self.params, self.stage_index)
        needs_data = self.module.is_first or self.module.is_last
        self.source = (
            TokenSource(cfg.dataset, cfg.gpt.vocab_size, cfg.seq, cfg.seed) if needs_data else None
        )
        self.clock = Clock(device)

    def micro_batches(self, iteration: int):
        """This rank's tokens and targets of `iteration`, split into micro-batches."""
        if self.source is None:
            return None, None
        tokens, targets = self.source.batch(iteration, self.replica, self.cfg.batch)
        split = self.cfg.micro_batch
        return (
            [t.to(self.device) for t in tokens.split(split)],
            [t.to(self.device) for t in targets.split(split)],
        )

    def step(self, iteration: int) -> IterationTimes:
        """One timed iteration: pipeline, gradient sync, optimizer step, then a barrier.

        The barrier that ends one iteration starts the next, so the iterations tile rank 0's
        time with nothing left uncounted between them. The reference's schedule times as the
        reference did: from leaving that barrier to the rank's own end, the barrier untimed.
        """
        start = self.clock()
        tokens, targets = self.micro_batches(iteration)
        for p in self.params:
            p.grad.zero_()
        begun = self.clock()
        loss, piped = self.pipe.run(tokens, targets, self.cfg.n_micro)
        synced = self.clock()
        self.sync.sync()
        stepped = self.clock()
        if self.loss_scale != 1.0:
            for p in self.params:
                p.grad.div_(self.loss_scale)
        self.optimizer.step()
        done = self.clock()
        dist.barrier()
        end = done if self.cfg.gpipe_schedule == "reference" else self.clock()
        return IterationTimes(
            iteration=iteration,
            total_s=end - start,
            pipeline_s=synced - begun,
            forward_s=piped.forward_s,
            backward_s=piped.backward_s,
            comm_wait_s=piped.comm_wait_s,
            ps_sync_s=stepped - synced,
            optimizer_s=done - stepped,
            loss=loss,
        )


def train(
    cfg: TrainerConfig,
    rank: int,
    device: torch.device,
    join: Callable[[], None],
    setup_s: dict[str, float] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_joined: Callable[[], None] | None = None,
) -> dict | None:
    """Run every iteration on this rank; rank 0 returns the summary.

    The stage is built first; then `on_ready`, if given, is called (a worker waits there for its
    controller to shape the network); only then does `join` bring the process group up, so the
    ranks' connections are made on the network under test (README, "The runner", says why).
    `on_joined`, if given, is called once the process group is up (a worker waits there while
    its controller probes the network).

    `setup_s` holds what the caller timed before; the summary adds building the stage, joining
    the process group (with the rank's engine and sync groups), the start barrier and gathering
    every rank's records, so a runner can say where a cell's time outside the iterations went.
    """
    setup_s = dict(setup_s or {})
    built = time.perf_counter()
    module = build_rank_stage(cfg, rank, device)
    setup_s["build_s"] = time.perf_counter() - built
    if on_ready is not None:
        on_ready()
    joining = time.perf_counter()
    join()
    trainer = RankTrainer(cfg, rank, device, module)
    setup_s["process_group_s"] = time.perf_counter() - joining
    if on_joined is not None:
        on_joined()
    started = time.perf_counter()
    dist.barrier()  # the first iteration starts when every rank is ready
    setup_s["start_barrier_s"] = time.perf_counter() - started
    rank_log = None
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        rank_log = open_append(cfg.out / f"rank-{rank}.jsonl", "out")
        rank_log.truncate(0)  # a run's own log
    records = []
    for iteration in range(cfg.iterations):
        record = trainer.step(iteration)
        records.append(record)
        if rank_log is not None:
            rank_log.write(json.dumps(record.as_dict()) + "\n")
            rank_log.flush()
        if rank == 0:
            print(f"iteration {iteration}: {record.total_s:.4f} s", flush=True)
    if rank_log is not None:
        rank_log.close()
    mine = {
        "rank": rank,
        "stage": trainer.stage_index,
        "replica": trainer.replica,
        "shard": trainer.position.shard,
        "hostname": socket.gethostname(),
        "records": [r.as_dict() for r in records],
    }
    everyone: list[dict] | None = [None] * dist.get_world_size() if rank == 0 else None
    gathered = time.perf_counter()
    dist.gather_object(mine, everyone, dst=0)
    setup_s["gather_s"] = time.perf_counter() - gathered
    if rank != 0:
        return None
    summary = build_summary(cfg, everyone, device) | {"setup_s": setup_s}
    if cfg.out is not None:
        write_results(cfg, summary, everyone)
    return summary


def iteration_losses(cfg: TrainerConfig, everyone: list[dict]) -> list[float]:
    """Per iteration, the batch loss averaged over the pipelines' last stages."""
    last = [r for r in everyone if r["stage"] == cfg.pipeline - 1]
    return [sum(r["records"][i]["loss"] for r in last) / len(last) for i in range(cfg.iterations)]


def build_summary(cfg: TrainerConfig, everyone: list[dict], device: torch.device) -> dict:
    """Rank 0's summary: phase spreads, per-stage times, the exact config and versions.

    `phases_measured` names the phases the engine times; the others read zero.
    """
    timed = [IterationTimes(**r) for r in everyone[0]["records"][cfg.warmup :]]
    phases = summarize(timed)
    stages = []
    for r in everyone:
        own = [IterationTimes(**x) for x in r["records"][cfg.warmup :]]
        means = {phase: s["mean"] for phase, s in summarize(own).items()}
        stages.append(
            {
                "rank": r["rank"],
                "stage": r["stage"],
                "replica": r["replica"],
                "shard": r["shard"],
                "hostname": r["hostname"],
                "forward_per_micro_s": means["forward_s"] / cfg.n_micro,
                "backward_per_micro_s": means["backward_s"] / cfg.n_micro,
                "mean_s": means,
            }
        )
    tokens = cfg.batch * cfg.dp_degree * cfg.seq
    flops = cfg.gpt.flops_per_token(cfg.seq) * tokens
    return {
        "config": json.loads(cfg.model_dump_json()),
        "world_size": cfg.world_size,
        "backend": dist.get_backend(),
        "device": _device_name(device),
        "hostname": socket.gethostname(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "timed_iterations": len(timed),
        "iterations_s": [t.total_s for t in timed],
        "warmup_iterations_s": [r["total_s"] for r in everyone[0]["records"][: cfg.warmup]],
        "engine": cfg.engine,
        "phases_measured": measured_phases(cfg.engine),
        "phases": phases,
        "stages": stages,
        "losses": iteration_losses(cfg, everyone),
        "tokens_per_iteration": tokens,
        "model_flops_per_iteration": flops,
        "model_tflops_per_s": flops / phases["total_s"]["mean"] / 1e12,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def write_results(cfg: TrainerConfig, summary: dict, everyone: list[dict]) -> None:
    """`iterations.jsonl` (rank 0's timed iterations with the batch loss) and `summary.json`."""
    losses = summary["losses"]
    timed = everyone[0]["records"][cfg.warmup :]
    lines = [json.dumps(record | {"loss": losses[record["iteration"]]}) + "\n" for record in timed]
    write_file(cfg.out / "iterations.jsonl", "".join(lines), "out")
    write_file(cfg.out / "summary.json", json.dumps(summary, indent=2) + "\n", "out")
    print(f"results in {cfg.out}", file=sys.stderr)
