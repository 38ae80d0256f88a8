"""Tensor parallelism inside a stage: each transformer block split over a tensor group.

Each block's attention heads and MLP hidden units are split across the T ranks of a tensor
group. The query/key/value projection and the MLP's first layer are column-parallel (each rank
holds its heads' or units' rows of the weight); the two output projections are row-parallel
(each rank holds the matching columns, and an all-reduce sums the partial outputs). Before each
column-parallel layer an identity whose backward all-reduces the input's gradient: two
all-reduces per block forward, two backward. Layer norms, output biases, the embedding and the
head are replicated; their gradients come out equal on every rank of the group, so data
parallelism syncs each shard with its own replicas only.

A shard is cut from the full stage (`shard_stage`), so its weights are exactly the
unpartitioned model's slices under the same names; `tensor_slice` says which slice a name holds.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.model import Block, CausalSelfAttention


class _CopyToGroup(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient backward (the `f` of column-parallel layers)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    """All-reduce forward; identity backward (the `g` of row-parallel layers)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _row_parallel(linear: nn.Linear, x: torch.Tensor, group) -> torch.Tensor:
    """`linear` holding this rank's columns: partial product, all-reduce, then the full bias."""
    y = _ReduceFromGroup.apply(F.linear(x, linear.weight), group)
    return y if linear.bias is None else y + linear.bias


class ParallelAttention(nn.Module):
    """This rank's heads of a causal self-attention."""

    def __init__(self, full: CausalSelfAttention, shard: int, n_tensor: int):
        super().__init__()
        self.n_head = full.n_head // n_tensor
        self.c_attn = _sliced_linear(full.c_attn, "attn.c_attn", shard, n_tensor)
        self.c_proj = _sliced_linear(full.c_proj, "attn.c_proj", shard, n_tensor)
        self.group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = _CopyToGroup.apply(x, self.group)
        q, k, v = self.c_attn(x).chunk(3, dim=2)
        width = q.shape[2]
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, width)
        return _row_parallel(self.c_proj, y, self.group)


class ParallelMLP(nn.Module):
    """This rank's hidden units of the feed-forward block."""

    def __init__(self, full: nn.Module, shard: int, n_tensor: int):
        super().__init__()
        self.c_fc = _sliced_linear(full.c_fc, "mlp.c_fc", shard, n_tensor)
        self.c_proj = _sliced_linear(full.c_proj, "mlp.c_proj", shard, n_tensor)
        self.group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _CopyToGroup.apply(x, self.group)
        return _row_parallel(self.c_proj, F.gelu(self.c_fc(x)), self.group)


def tensor_slice(name: str, full: torch.Tensor, shard: int, n_tensor: int) -> torch.Tensor:
    """The part of the unpartitioned model's tensor `name` (a parameter or its gradient) that
    shard `shard` of `n_tensor` holds: the whole tensor when it is replicated."""
    if n_tensor == 1:
        return full
    if ".attn.c_attn." in name:  # q, k and v stacked: this shard's heads of each
        qkv = full.view(3, full.shape[0] // 3, *full.shape[1:])
        return qkv.chunk(n_tensor, dim=1)[shard].reshape(-1, *full.shape[1:])
    if ".mlp.c_fc." in name:  # column-parallel: this shard's output rows
        return full.chunk(n_tensor, dim=0)[shard]
    if name.endswith("c_proj.weight"):  # row-parallel: this shard's input columns
        return full.chunk(n_tensor, dim=1)[shard]
    return full


def _sliced_linear(full: nn.Linear, name: str, shard: int, n_tensor: int) -> nn.Linear:
    weight = tensor_slice(f".{name}.weight", full.weight.detach(), shard, n_tensor)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=full.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if full.bias is not None:
            linear.bias.copy_(tensor_slice(f".{name}.bias", full.bias.detach(), shard, n_tensor))
    return linear


def shard_stage(stage: nn.Module, shard: int, n_tensor: int) -> None:
    """Cut every block of `stage` down to shard `shard` of `n_tensor`, in place (no
    communication: `join_tensor_group` gives the shards their group once it exists)."""
    if n_tensor == 1:
        return
    for block in stage.modules():
        if isinstance(block, Block):
            block.attn = ParallelAttention(block.attn, shard, n_tensor)
            block.mlp = ParallelMLP(block.mlp, shard, n_tensor)


def join_tensor_group(stage: nn.Module, group: dist.ProcessGroup) -> None:
    """Let every tensor-parallel layer of `stage` all-reduce over `group`."""
    for module in stage.modules():
        if isinstance(module, ParallelAttention | ParallelMLP):
            module.group = group


def tensor_groups(layout) -> dict[tuple[int, int], dist.ProcessGroup]:
    """One process group per (stage, replica): the ranks that split that stage.

    Collective: every rank must call it, in the same order as every other `new_group`.
    """
    return {
        (stage, replica): dist.new_group(layout.tensor_ranks(stage, replica))
        for replica in range(layout.dp_degree)
        for stage in range(layout.stages)
    }
