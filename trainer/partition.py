"""Split the decoder's layers into pipeline stages and build one stage's module."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.model import Block, Embedding, GPTConfig, init_parameters, make_head


def split_layers(n_layer: int, n_stages: int, layers: list[int] | None = None) -> list[range]:
    """Global layer indices of each stage: `layers` counts per stage, else as even as possible."""
    if layers is None:
        base, extra = divmod(n_layer, n_stages)
        layers = [base + (1 if s < extra else 0) for s in range(n_stages)]
    if len(layers) != n_stages or sum(layers) != n_layer or min(layers) < 1:
        raise ValueError(f"layer split {layers} does not give {n_stages} stages of {n_layer}")
    starts = [sum(layers[:s]) for s in range(n_stages)]
    return [range(start, start + count) for start, count in zip(starts, layers, strict=True)]


def block_sizes(gpt: GPTConfig, tensor: int = 1) -> list[int]:
    """Element count of each parameter tensor of one block (of one tensor-parallel shard:
    trainer/tensorparallel.py splits q/k/v and the first MLP layer by rows, both output
    projections' weights by columns)."""
    d = gpt.n_embd
    norm = [d, d] if gpt.bias else [d]

    def linear(n_in: int, n_out: int, split_bias: bool = True) -> list[int]:
        bias = n_out // tensor if split_bias else n_out
        return [n_in * n_out // tensor, bias] if gpt.bias else [n_in * n_out // tensor]

    return (
        norm + linear(d, 3 * d) + linear(d, d, split_bias=False)
        + norm + linear(d, 4 * d) + linear(4 * d, d, split_bias=False)
    )  # fmt: skip


def stage_tensor_sizes(gpt: GPTConfig, layers: list[range], tensor: int = 1) -> list[list[int]]:
    """Element count of each parameter tensor of each stage (of one tensor-parallel shard), in
    the stage's own order."""
    d, v, t = gpt.n_embd, gpt.vocab_size, gpt.block_size
    stages = [block_sizes(gpt, tensor) * len(own) for own in layers]
    stages[0] = [v * d, t * d] + stages[0]
    stages[-1] = stages[-1] + gpt.head_sizes()
    return stages


class Stage(nn.Module):
    """One pipeline stage: the embedding on the first, the head on the last.

    Parameter names are those of the full model (`embed.*`, `h.<global index>.*`, `head.*`).
    """

    def __init__(
        self,
        cfg: GPTConfig,
        stage: int,
        n_stages: int,
        layers: list[int] | None = None,
        seed: int = 0,
        recompute: bool = False,
    ):
        super().__init__()
        self.stage, self.n_stages, self.recompute = stage, n_stages, recompute
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        own = split_layers(cfg.n_layer, n_stages, layers)[stage]
        self.embed = Embedding(cfg) if self.is_first else None
        self.h = nn.ModuleDict({str(i): Block(cfg) for i in own})
        self.head = make_head(cfg) if self.is_last else None
        init_parameters(self, cfg, seed)

    def _run(self, fn, *args):
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (first stage) or activations in; activations out, or the loss on the last."""
        if self.embed is not None:
            x = self.embed(x)
        for block in self.h.values():
            x = self._run(block, x)
        if self.head is None:
            return x
        return self._run(lambda y, t: self.head.loss(self.head(y), t), x, targets)
