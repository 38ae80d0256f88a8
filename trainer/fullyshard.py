"""Fully sharded data parallelism (`dp_mode = "fsdp"`): each stage's parameters, gradients and
optimizer state sharded over the stage's replicas with PyTorch's `fully_shard`.

Every block of the stage is its own unit, and the module the engine calls (the stage, or the
library schedule's wrapper of it) the root: a block's parameters are
all-gathered from the replicas just before its forward and freed after it, gathered again for
its backward, and its gradients reduce-scattered (averaged) so that each replica keeps the
shard it owns. Over a pipeline's micro-batches the gradients accumulate unsharded and are
reduce-scattered once, in the last backward (our engine says which backward is the last; a
`torch.distributed.pipelining` schedule does the same itself): the sync after the pipeline
has nothing left to do, and its time is part of the pipeline's.
Each replica's optimizer steps its own shard.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from trainer.gradsync import GradientSync
from trainer.model import Block


class FullyShardedSync(GradientSync):
    """Shards `module` over its replicas' group; the gradient sync of `dp_mode = "fsdp"`."""

    def __init__(
        self, module: nn.Module, ranks: list[int], replica: int, group: dist.ProcessGroup,
        device_type: str,
    ):  # fmt: skip
        """Shard in place (collective over `group`): `module.parameters()` become shards."""
        mesh = DeviceMesh.from_group(group, device_type)
        for block in module.modules():
            if isinstance(block, Block):
                fully_shard(block, mesh=mesh)
        self.module = fully_shard(module, mesh=mesh)
        super().__init__(module, ranks, replica)

    def before_backward(self, last: bool) -> None:
        """Keep the gradients unsharded and the parameters gathered until the last backward;
        reduce-scatter in that one."""
        self.module.set_requires_gradient_sync(last)
        self.module.set_reshard_after_backward(last)
        self.module.set_is_last_backward(last)

    def sync(self) -> None:
        """Nothing: the last backward reduce-scattered the gradients."""
