"""Averaging a stage's gradients over the D pipelines.

`ps` mode is a centralized parameter server per stage: the stage's rank in pipeline 0 is the
server. Every other replica pushes its flattened gradients to it with `isend`; the server sums
them with its own, divides by D and sends the average back to each replica with `isend`. Every
replica then applies the same average with its own optimizer, so the replicas stay identical.
`allreduce` mode averages with the backend's all-reduce inside the stage's replica group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.distributed as dist
from torch import nn

from trainer.layout import rank_of

PS_PUSH_TAG = 1 << 20
PS_PULL_TAG = PS_PUSH_TAG + 1


class GradientSync(ABC):
    """Makes every replica's gradients of one stage the replicas' average."""

    def __init__(self, module: nn.Module, stage: int, replica: int, n_stages: int, n_replicas: int):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.replica, self.n_replicas = replica, n_replicas
        self.ranks = [rank_of(stage, r, n_stages) for r in range(n_replicas)]

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.params])

    def _scatter(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    @abstractmethod
    def sync(self) -> None:
        """Replace this replica's gradients by the average over all replicas."""


class ParameterServer(GradientSync):
    """Push to the stage's server (the pipeline-0 rank), which averages and sends back."""

    def sync(self) -> None:
        if self.n_replicas == 1:
            return
        flat = self._flat()
        server = self.ranks[0]
        if self.replica == 0:
            pushed = [torch.empty_like(flat) for _ in self.ranks[1:]]
            works = [
                dist.irecv(buf, src=src, tag=PS_PUSH_TAG)
                for buf, src in zip(pushed, self.ranks[1:], strict=True)
            ]
            for work, buf in zip(works, pushed, strict=True):
                work.wait()
                flat += buf
            flat /= self.n_replicas
            for work in [dist.isend(flat, dst=dst, tag=PS_PULL_TAG) for dst in self.ranks[1:]]:
                work.wait()
        else:
            push = dist.isend(flat, dst=server, tag=PS_PUSH_TAG)
            averaged = torch.empty_like(flat)
            pull = dist.irecv(averaged, src=server, tag=PS_PULL_TAG)
            push.wait()
            pull.wait()
            flat = averaged
        self._scatter(flat)


class AllReduce(GradientSync):
    """The backend's all-reduce over the stage's replicas, then divide by D."""

    def __init__(self, module, stage, replica, n_stages, n_replicas, group):
        super().__init__(module, stage, replica, n_stages, n_replicas)
        self.group = group

    def sync(self) -> None:
        if self.n_replicas == 1:
            return
        flat = self._flat()
        dist.all_reduce(flat, group=self.group)
        flat /= self.n_replicas
        self._scatter(flat)


def make_gradient_sync(
    mode: str, module: nn.Module, stage: int, replica: int, n_stages: int, n_replicas: int
) -> GradientSync:
    """The sync for `mode` ('ps' or 'allreduce'). Collective: every rank must call it."""
    if mode == "ps" or n_replicas == 1:
        return ParameterServer(module, stage, replica, n_stages, n_replicas)
    groups = [
        dist.new_group([rank_of(s, r, n_stages) for r in range(n_replicas)])
        for s in range(n_stages)
    ]
    return AllReduce(module, stage, replica, n_stages, n_replicas, groups[stage])
