"""The engines a run can choose: our GPipe over point-to-point, or a `torch.distributed.pipelining`
schedule on the same stage, micro-batches and data.

Every engine has `run(tokens, targets, n_micro) -> (loss | None, PipelineTimes)` and leaves the
stage's gradients in its parameters' `.grad`, so gradient sync and optimizer are shared.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.config import ENGINES, TrainerConfig
from trainer.emulated import EmulatedStage
from trainer.gpipe import GPipe
from trainer.layout import Layout, Position
from trainer.partition import Stage
from trainer.timing import PHASES

OURS = "gpipe"
LIBRARY_SCHEDULES = tuple(engine for engine in ENGINES if engine != OURS)

SEPARATE_PHASES = ("forward_s", "backward_s", "comm_wait_s")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def measured_phases(engine: str) -> list[str]:
    """The phases `engine` measures: a library schedule's step is one span (`pipeline_s`)."""
    if engine == OURS:
        return list(PHASES)
    return [p for p in PHASES if p not in SEPARATE_PHASES]


def pipeline_group(layout: Layout, position: Position) -> dist.ProcessGroup | None:
    """The process group of this rank's pipeline (its shard's ranks in stage order); None when
    the world is one pipeline.

    Collective: every rank must call it, in the same order as every other `new_group`.
    """
    if layout.dp_degree == 1 and layout.tensor == 1:
        return None
    groups = {
        (r, t): dist.new_group(layout.pipeline_ranks(r, t))
        for r in range(layout.dp_degree)
        for t in range(layout.tensor)
    }
    return groups[position.replica, position.shard]


def make_engine(
    cfg: TrainerConfig, stage: Stage | EmulatedStage, position: Position, device: torch.device
):
    """The engine `cfg.engine` for this rank's stage. Collective: every rank must call it."""
    compute_dtype, loss_scale = DTYPES[cfg.dtype], cfg.applied_loss_scale
    if cfg.engine == OURS:
        if isinstance(stage, EmulatedStage):
            shape = stage.activation_shape(cfg.micro_batch)
        else:
            shape = (cfg.micro_batch, cfg.seq, cfg.gpt.n_embd)
        return GPipe(
            stage, cfg.layout, position, shape, device, compute_dtype, loss_scale,
            cfg.gpipe_schedule,
        )  # fmt: skip
    if cfg.engine not in LIBRARY_SCHEDULES:
        raise ValueError(f"unknown engine {cfg.engine!r}; known: {', '.join(ENGINES)}")
    # Imported only here: the library adds seconds to every rank's start-up.
    from trainer.pipelining import PipeliningSchedule

    group = pipeline_group(cfg.layout, position)
    return PipeliningSchedule(
        cfg.engine, stage, cfg.n_micro, device, group, compute_dtype, loss_scale
    )
