"""The GPipe schedule over torch.distributed point-to-point.

All micro-batches go forward, then all go backward (last first). Every receive of an
iteration's phase is posted up front with `irecv`, and every send is an `isend`, so transfers
run while the stage computes; a stage blocks only when the tensor it needs next has not arrived.
Gradients accumulate in the stage's parameters over the micro-batches.

The `reference` schedule is the reference system's GPipe: the same steps, plus a barrier of
every rank of the world between the forwards and the backwards (entered once the rank's
forward sends have completed), and a middle stage taking its next input only once its previous
send has completed (its backend, NCCL, runs a communicator's kernels in launch order, and it
launches each receive after the previous send).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import get_args

import torch
import torch.distributed as dist

from trainer.config import GpipeSchedule
from trainer.layout import Layout, Position
from trainer.partition import Stage
from trainer.timing import Clock, PipelineTimes

SCHEDULES = get_args(GpipeSchedule)


class GPipe:
    """Runs one iteration of the GPipe schedule for one stage of one pipeline."""

    def __init__(
        self,
        stage: Stage,
        layout: Layout,
        position: Position,
        act_shape: tuple[int, ...],
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
        loss_scale: float = 1.0,
        schedule: str = "gpipe",
    ):
        """`schedule` is `gpipe` or `reference`."""
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        self.reference = schedule == "reference"
        self.stage, self.device = stage, device
        self.act_shape = act_shape
        self.wire_dtype = compute_dtype
        self.loss_scale = loss_scale
        s, replica, shard = position.stage, position.replica, position.shard
        self.prev = layout.rank(s - 1, replica, shard) if not stage.is_first else None
        self.next = layout.rank(s + 1, replica, shard) if not stage.is_last else None
        self.autocast = (
            torch.autocast(device.type, dtype=compute_dtype)
            if compute_dtype != torch.float32
            else contextlib.nullcontext()
        )
        self.clock = Clock(device)
        self.before_backward: Callable[[bool], None] | None = None
        """Called before each micro-batch's backward, True for the last (fully sharded data
        parallelism reduce-scatters in that one)."""

    @property
    def module(self) -> Stage:
        """The module this engine calls: what fully sharded data parallelism wraps."""
        return self.stage

    def _post_receives(self, peer: int | None, n_micro: int, tag_base: int, order):
        if peer is None:
            return {}
        posted = {}
        for m in order:
            buf = torch.empty(self.act_shape, dtype=self.wire_dtype, device=self.device)
            posted[m] = (buf, dist.irecv(buf, src=peer, tag=tag_base + m))
        return posted

    def _wait(self, work, times: PipelineTimes) -> None:
        start = self.clock()
        work.wait()
        times.comm_wait_s += self.clock() - start

    def _after_previous_send(self, sends: list, times: PipelineTimes) -> None:
        """Under the reference schedule a middle stage takes its next input only once its
        previous send has completed (a gloo work is waited for once: it leaves the list)."""
        if self.reference and self.prev is not None and self.next is not None and sends:
            self._wait(sends.pop()[1], times)

    def run(
        self, tokens: list[torch.Tensor] | None, targets: list[torch.Tensor] | None, n_micro: int
    ) -> tuple[float | None, PipelineTimes]:
        """Forward and backward `n_micro` micro-batches; returns the batch loss (last stage)."""
        times = PipelineTimes()
        sends = []
        inputs, outputs = [], []
        received = self._post_receives(self.prev, n_micro, 0, range(n_micro))
        for m in range(n_micro):
            if self.prev is None:
                x = tokens[m]
            else:
                self._after_previous_send(sends, times)
                buf, work = received.pop(m)
                self._wait(work, times)
                x = buf.float().requires_grad_()
            start = self.clock()
            with self.autocast:
                if self.next is None:
                    y = self.stage(x, targets[m]) / n_micro
                else:
                    y = self.stage(x)
            if self.next is not None:
                wire = y.detach().to(self.wire_dtype)
                sends.append((wire, dist.isend(wire, dst=self.next, tag=m)))
            times.forward_s += self.clock() - start
            inputs.append(x)
            outputs.append(y)

        if self.reference:  # the forwards end with their sends, as a device synchronize does
            for _, work in sends:
                self._wait(work, times)
            sends.clear()
            start = self.clock()
            dist.barrier()
            times.comm_wait_s += self.clock() - start
        backward_order = range(n_micro - 1, -1, -1)
        grads = self._post_receives(self.next, n_micro, n_micro, backward_order)
        loss = torch.zeros((), device=self.device) if self.next is None else None
        for m in backward_order:
            if self.before_backward is not None:
                self.before_backward(m == backward_order[-1])
            if self.next is None:
                loss += outputs[m].detach().float()
                start = self.clock()
                (outputs[m] * self.loss_scale).backward()
            else:
                self._after_previous_send(sends, times)
                buf, work = grads.pop(m)
                self._wait(work, times)
                start = self.clock()
                torch.autograd.backward(outputs[m], buf.to(outputs[m].dtype))
            if self.prev is not None:
                wire = inputs[m].grad.to(self.wire_dtype)
                sends.append((wire, dist.isend(wire, dst=self.prev, tag=n_micro + m)))
            times.backward_s += self.clock() - start
            inputs[m] = outputs[m] = None
        for _, work in sends:
            self._wait(work, times)
        return (loss.item() if loss is not None else None), times
