"""Where each rank sits: `rank = replica * n_stages + stage`, so rank 0 is stage 0 of pipeline 0."""

from __future__ import annotations


def rank_of(stage: int, replica: int, n_stages: int) -> int:
    """The global rank running `stage` of pipeline `replica`."""
    return replica * n_stages + stage


def position_of(rank: int, n_stages: int) -> tuple[int, int]:
    """(stage, replica) of a global rank: the inverse of `rank_of`."""
    replica, stage = divmod(rank, n_stages)
    return stage, replica
