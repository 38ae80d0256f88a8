"""Rank functions for the trainer tests, run in real processes over gloo on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.config import TrainerConfig
from trainer.train import RankTrainer

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def one_data_parallel_step(rank, world_size, port, out_dir, base, modes):
    """One full iteration (pipeline, gradient sync, optimizer) per mode; save params and grads."""
    _join(rank, world_size, port)
    for mode in modes:
        trainer = RankTrainer(TrainerConfig(**base, dp_mode=mode), rank, CPU)
        trainer.step(0)
        state = {
            "params": {n: p.detach().clone() for n, p in trainer.module.named_parameters()},
            "grads": {n: p.grad.clone() for n, p in trainer.module.named_parameters()},
        }
        torch.save(state, Path(out_dir) / f"{mode}-r{rank}.pt")
    dist.destroy_process_group()


def spawn(fn, world_size: int, *args) -> None:
    """Run `fn(rank, world_size, port, *args)` in `world_size` fresh processes and join them."""
    torch.multiprocessing.start_processes(
        fn, args=(world_size, free_port(), *args), nprocs=world_size, start_method="spawn"
    )


def launch_cli(
    world_size: int, flags: list[str], env: dict | None = None, port: int | None = None
) -> list[subprocess.Popen]:
    """Start `python -m trainer FLAGS` once per rank, as an operator would."""
    port = port or free_port()
    procs = []
    for rank in range(world_size):
        rank_env = os.environ | {
            "PYTHONPATH": str(REPO),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "trainer", "--threads", "1", *flags],
                cwd=REPO,
                env=rank_env | (env or {}),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of every process; kills the ones still running at `timeout`."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results
