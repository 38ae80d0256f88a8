"""The baseline engines: the same stage run by `torch.distributed.pipelining`.

`PipelineStage` wraps the stage's module and `ScheduleGPipe` or `Schedule1F1B` drives it over
the pipeline's process group. The last stage ends in logits and the schedule's loss function is
the model's loss divided by the number of micro-batches, with `scale_grads=False`, so the
gradients are exactly those of our own GPipe. The library infers the activations' shapes on its
first step, which must therefore be left out of the timing (warm-up ≥ 1); the forward and
backward passes and their transfers happen inside one `step` and are timed as one span.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from trainer.partition import Stage
from trainer.timing import PipelineTimes

SCHEDULES = {"pipelining-gpipe": ScheduleGPipe, "pipelining-1f1b": Schedule1F1B}


class StageToLogits(nn.Module):
    """A stage whose last stage returns logits: the schedule's loss function takes it from there."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens or activations in; activations out, or logits on the last stage."""
        stage = self.stage
        if stage.embed is not None:
            x = stage.embed(x)
        for block in stage.h.values():
            x = stage._run(block, x)
        return x if stage.head is None else stage._run(stage.head, x)


class PipeliningSchedule:
    """One iteration of a `torch.distributed.pipelining` schedule for one stage of one pipeline."""

    def __init__(
        self,
        engine: str,
        stage: Stage,
        n_micro: int,
        device: torch.device,
        group: dist.ProcessGroup | None = None,
        compute_dtype: torch.dtype = torch.float32,
        loss_scale: float = 1.0,
    ):
        self.stage, self.loss_scale = stage, loss_scale
        self.module = StageToLogits(stage)
        """The module the schedule calls: what fully sharded data parallelism wraps (the
        library then keeps the gradients unsharded until the last backward itself)."""
        self.pipe_stage = PipelineStage(
            self.module, stage.stage, stage.n_stages, device, group=group
        )
        self.schedule = SCHEDULES[engine](
            self.pipe_stage, n_micro, loss_fn=self._loss, scale_grads=False
        )
        self.n_micro = n_micro
        self.autocast = (
            torch.autocast(device.type, dtype=compute_dtype)
            if compute_dtype != torch.float32
            else contextlib.nullcontext()
        )

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.stage.head.loss(logits, targets) / self.n_micro * self.loss_scale

    def run(
        self, tokens: list[torch.Tensor] | None, targets: list[torch.Tensor] | None, n_micro: int
    ) -> tuple[float | None, PipelineTimes]:
        """Forward and backward `n_micro` micro-batches; returns the batch loss (last stage).

        The phases inside the schedule's step cannot be told apart: the times come back zero and
        the caller times the whole call.
        """
        if n_micro != self.n_micro:
            raise ValueError(f"schedule built for {self.n_micro} micro-batches, not {n_micro}")
        args = (torch.cat(tokens),) if self.stage.is_first else ()
        losses: list[torch.Tensor] | None = [] if self.stage.is_last else None
        target = torch.cat(targets) if self.stage.is_last else None
        with self.autocast:
            self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        if losses is None:
            return None, PipelineTimes()
        loss = torch.stack([x.detach().float() for x in losses]).sum() / self.loss_scale
        return loss.item(), PipelineTimes()
