"""The interface every data-parallel mode implements (trainer/dataparallel.py,
trainer/fullyshard.py): make a stage's gradients the average over its replicas."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn


class GradientSync(ABC):
    """Makes every replica's gradients of one stage the replicas' average."""

    def __init__(self, module: nn.Module, ranks: list[int], replica: int):
        """`ranks`: the global ranks of this stage's (and shard's) replicas, replica order."""
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.replica, self.dp_degree = replica, len(ranks)
        self.ranks = ranks

    @abstractmethod
    def sync(self) -> None:
        """Replace this replica's gradients by the average over all replicas."""

    def before_backward(self, last: bool) -> None:  # noqa: B027 - a hook most modes leave empty
        """Called by the engine before each micro-batch's backward; `last` for the final one."""
