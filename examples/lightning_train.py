"""A plain Lightning DDP job on CPU: a small MLP on random data, one process per host.

Each host starts one process with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK and
LOCAL_RANK=0 in the environment (GLOO_SOCKET_IFNAME names the interface gloo talks over;
OMP_NUM_THREADS=1 on small hosts). Nothing in it knows about wanlab: under wanlab, the
callback it ships (registered through Lightning's callbacks_factory entry point) prints one JSON
line per step on rank 0.

    python lightning_train.py --steps 20 --hidden 512 --layers 4
"""

import argparse
import os

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-nodes", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class RandomPairs(IterableDataset):
    """Endless (input, target) pairs of random numbers, different on every rank."""

    def __init__(self, hidden, seed):
        self.hidden = hidden
        self.seed = seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + int(os.environ.get("RANK", "0")))
        while True:
            yield (
                torch.randn(self.hidden, generator=generator),
                torch.randn(self.hidden, generator=generator),
            )


class MLP(L.LightningModule):
    def __init__(self, hidden, layers):
        super().__init__()
        blocks = []
        for _ in range(layers):
            blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*blocks)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=args.num_nodes,
        strategy="ddp",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(RandomPairs(args.hidden, args.seed), batch_size=args.micro_batch)
    trainer.fit(MLP(args.hidden, args.layers), data)


if __name__ == "__main__":
    main()
