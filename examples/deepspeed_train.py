"""A plain DeepSpeed ZeRO job on CPU: a small MLP on random data.

Started like any torchrun-style job: one process per host, with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment (GLOO_SOCKET_IFNAME names the
interface gloo talks over). DeepSpeed's own `wall_clock_breakdown` prints each step's
forward, backward, all-reduce and optimizer-step times on rank 0.

    python deepspeed_train.py --steps 20 --zero-stage 2 --hidden 512 --layers 4
"""

import argparse

import deepspeed
import torch
from torch import nn


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_model(hidden, layers):
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*blocks)


def main():
    args = parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(args.seed)
    model = make_model(args.hidden, args.layers)
    # A torch optimizer: DeepSpeed's own Adam builds a C++ op on first use.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": args.zero_stage},
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": True,
        "steps_per_print": 1,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    generator = torch.Generator().manual_seed(args.seed + engine.global_rank)
    for _ in range(args.steps):
        inputs = torch.randn(args.micro_batch, args.hidden, generator=generator)
        targets = torch.randn(args.micro_batch, args.hidden, generator=generator)
        loss = nn.functional.mse_loss(engine(inputs), targets)
        engine.backward(loss)
        engine.step()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
