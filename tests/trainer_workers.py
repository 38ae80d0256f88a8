"""Rank functions for the trainer tests, run in real processes over gloo on 127.0.0.1."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from experiments.localranks import free_port, launch_local
from trainer.config import TrainerConfig
from trainer.dataparallel import make_gradient_sync
from trainer.train import RankTrainer

CPU = torch.device("cpu")


def _join(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )


def pipeline_gradients(rank, world_size, port, out_dir, base, micro_counts):
    """For each micro-batch count, one pipelined forward+backward; save loss and gradients."""
    _join(rank, world_size, port)
    for n_micro in micro_counts:
        cfg = TrainerConfig(**base, micro_batch=base["batch"] // n_micro)
        trainer = RankTrainer(cfg, rank, CPU)
        tokens, targets = trainer.micro_batches(0)
        loss, _ = trainer.pipe.run(tokens, targets, n_micro)
        grads = {name: p.grad.clone() for name, p in trainer.module.named_parameters()}
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"m{n_micro}-r{rank}.pt")
    dist.destroy_process_group()


def one_data_parallel_step(rank, world_size, port, out_dir, base, variants):
    """One full iteration (pipeline, gradient sync, optimizer) per variant; save params and grads.

    A variant is (label, TrainerConfig overrides, collectives): `collectives` runs `ps` and
    `sharded-ps` on gloo's own reduce and broadcast, the path NCCL takes.
    """
    _join(rank, world_size, port)
    for label, overrides, collectives in variants:
        cfg = TrainerConfig(**base, **overrides)
        trainer = RankTrainer(cfg, rank, CPU)
        if collectives:
            trainer.sync = make_gradient_sync(
                cfg.dp_mode, trainer.module, cfg.layout, trainer.position,
                bucket_bytes=cfg.ps_bucket_bytes, collectives=True,
            )  # fmt: skip
        trainer.step(0)
        named = list(trainer.module.named_parameters())
        state = {  # under fsdp the replicas' shards gathered (a collective, in this order)
            "params": {n: whole(p.detach()) for n, p in named},
            "grads": {n: whole(p.grad) for n, p in named},
        }
        torch.save(state, Path(out_dir) / f"{label}-r{rank}.pt")
    dist.destroy_process_group()


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor`, gathered from every shard when it is sharded (a DTensor)."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor.clone()


def spawn(fn, world_size: int, *args) -> None:
    """Run `fn(rank, world_size, port, *args)` in `world_size` fresh processes and join them."""
    torch.multiprocessing.start_processes(
        fn, args=(world_size, free_port(), *args), nprocs=world_size, start_method="spawn"
    )


def launch_cli(world_size: int, flags: list[str]):
    """`python -m trainer` per rank on 127.0.0.1, one thread each."""
    return launch_local(world_size, ["--threads", "1", *flags])
