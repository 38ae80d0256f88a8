"""Per-iteration phase timers and their summary statistics."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

PHASES = (
    "total_s",
    "pipeline_s",
    "forward_s",
    "backward_s",
    "comm_wait_s",
    "ps_sync_s",
    "optimizer_s",
)


class Clock:
    """Seconds since an arbitrary origin; on CUDA, waits for the compute stream first."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.current_stream().synchronize()
        return time.perf_counter()


@dataclass
class PipelineTimes:
    """Seconds one stage spent computing and blocked on transfers in one iteration."""

    forward_s: float = 0.0
    backward_s: float = 0.0
    comm_wait_s: float = 0.0


@dataclass
class IterationTimes:
    """One rank's phases of one iteration, in seconds.

    `pipeline_s` is the whole schedule (forward, backward and their transfers); forward_s,
    backward_s and comm_wait_s are its parts, where the engine can tell them apart.
    """

    iteration: int
    total_s: float = 0.0
    pipeline_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    comm_wait_s: float = 0.0
    ps_sync_s: float = 0.0
    optimizer_s: float = 0.0
    loss: float | None = None

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, median, p10, p90, std, min and max of `values`."""
    ordered = sorted(values)

    def quantile(q: float) -> float:
        pos = q * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p10": quantile(0.1),
        "p90": quantile(0.9),
        "std": statistics.pstdev(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def summarize(records: list[IterationTimes]) -> dict[str, dict[str, float]]:
    """Spread of every phase over the given (timed) iterations."""
    return {phase: spread([getattr(r, phase) for r in records]) for phase in PHASES}
