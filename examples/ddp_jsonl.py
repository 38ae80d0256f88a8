"""A plain torch.distributed DDP loop that prints one JSON line per step on rank 0.

Started like any torchrun-style job: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the
environment, one process per host. Each line is `{"step": i, "iteration_s": t}`, the wall
time of one forward, backward (with DDP's gradient all-reduce) and optimizer step.

    python ddp_jsonl.py --steps 20 --hidden 512 --layers 4
"""

import argparse
import json
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(args.seed)
    blocks = []
    for _ in range(args.layers):
        blocks += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
    model = DistributedDataParallel(nn.Sequential(*blocks))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(args.seed + rank)
    for step in range(args.steps):
        inputs = torch.randn(args.micro_batch, args.hidden, generator=generator)
        targets = torch.randn(args.micro_batch, args.hidden, generator=generator)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        iteration_s = time.perf_counter() - started
        if rank == 0:
            print(json.dumps({"step": step, "iteration_s": round(iteration_s, 6)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
