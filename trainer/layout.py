"""Where each rank sits in a tensor × pipeline × data-parallel layout (`tp × pp × dp`).

Tensor-parallel ranks vary fastest, then stages, then replicas:
`rank = (replica · S + stage) · T + shard`. With T = 1 this is the reference system's
pipeline-major order (rank = replica · S + stage: rank 0 is stage 0 of pipeline 0 and a
pipeline's stages are consecutive ranks); a tensor group is T consecutive ranks, so placed in
inventory order it stays on one host's GPUs when a host has T of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHAPE = re.compile(r"tp([1-9][0-9]{0,3})-pp([1-9][0-9]{0,3})")
"""A matrix's layout axis value: `tpT-ppS` (the DP degree comes from its own axis)."""


def parse_shape(text: str) -> tuple[int, int]:
    """(tensor, stages) of `tpT-ppS`; ValueError for anything else."""
    match = SHAPE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a layout like 'tp2-pp4'")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Position:
    """One rank's place: its pipeline stage, its replica (pipeline), its tensor shard."""

    stage: int
    replica: int
    shard: int = 0


@dataclass(frozen=True)
class Layout:
    """A run's `tensor × stages × dp_degree` ranks: `dp_degree` pipelines (replicas)."""

    stages: int
    dp_degree: int = 1
    tensor: int = 1

    @property
    def world_size(self) -> int:
        """Ranks the layout needs."""
        return self.tensor * self.stages * self.dp_degree

    def rank(self, stage: int, replica: int, shard: int = 0) -> int:
        """The global rank of shard `shard` of `stage` in pipeline `replica`."""
        return (replica * self.stages + stage) * self.tensor + shard

    def position(self, rank: int) -> Position:
        """Where global `rank` sits: the inverse of `rank`."""
        rest, shard = divmod(rank, self.tensor)
        replica, stage = divmod(rest, self.stages)
        return Position(stage, replica, shard)

    def pipeline_ranks(self, replica: int, shard: int = 0) -> list[int]:
        """The ranks of one pipeline (one tensor shard of it), stage order."""
        return [self.rank(s, replica, shard) for s in range(self.stages)]

    def replica_ranks(self, stage: int, shard: int = 0) -> list[int]:
        """The ranks holding the same stage and shard in every pipeline: a data-parallel group."""
        return [self.rank(stage, r, shard) for r in range(self.dp_degree)]

    def tensor_ranks(self, stage: int, replica: int) -> list[int]:
        """The ranks that split one stage of one pipeline between them: a tensor group."""
        return [self.rank(stage, replica, t) for t in range(self.tensor)]

    def describe(self) -> str:
        """`tpT-ppS-dpD`, as records and reports name a layout."""
        return f"tp{self.tensor}-pp{self.stages}-dp{self.dp_degree}"
