"""The engines a run can choose: our GPipe over point-to-point, or a `torch.distributed.pipelining`
schedule on the same stage, micro-batches and data.

Every engine has `run(tokens, targets, n_micro) -> (loss | None, PipelineTimes)` and leaves the
stage's gradients in its parameters' `.grad`, so gradient sync and optimizer are shared.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.layout import rank_of
from trainer.partition import Stage
from trainer.pipeline import GPipe
from trainer.timing import PHASES

OURS = "gpipe"
LIBRARY_SCHEDULES = ("pipelining-gpipe", "pipelining-1f1b")
ENGINES = (OURS, *LIBRARY_SCHEDULES)

SEPARATE_PHASES = ("forward_s", "backward_s", "comm_wait_s")


def measured_phases(engine: str) -> list[str]:
    """The phases `engine` measures: a library schedule's step is one span (`pipeline_s`)."""
    if engine == OURS:
        return list(PHASES)
    return [p for p in PHASES if p not in SEPARATE_PHASES]


def pipeline_groups(n_stages: int, n_replicas: int) -> list[dist.ProcessGroup | None]:
    """One process group per pipeline (its ranks in stage order); None when there is one.

    Collective: every rank must call it, in the same order as every other `new_group`.
    """
    if n_replicas == 1:
        return [None]
    return [
        dist.new_group([rank_of(s, r, n_stages) for s in range(n_stages)])
        for r in range(n_replicas)
    ]


def make_engine(
    engine: str,
    stage: Stage,
    replica: int,
    n_replicas: int,
    micro_batch: int,
    n_micro: int,
    seq: int,
    n_embd: int,
    device: torch.device,
    compute_dtype: torch.dtype = torch.float32,
    loss_scale: float = 1.0,
):
    """The engine `engine` for this rank's stage. Collective: every rank must call it."""
    if engine == OURS:
        return GPipe(stage, replica, micro_batch, seq, n_embd, device, compute_dtype, loss_scale)
    if engine not in LIBRARY_SCHEDULES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    # Imported only here: the library adds seconds to every rank's start-up.
    from trainer.pipelining import PipeliningSchedule

    group = pipeline_groups(stage.n_stages, n_replicas)[replica]
    return PipeliningSchedule(engine, stage, n_micro, device, group, compute_dtype, loss_scale)
