"""Emulated compute: a stage that holds its rank for a given time and moves tensors of given sizes.

A scale model of a fleet keeps the target's compute times and delays and shrinks every tensor
and rate by one factor (`Emulation.scale`), so the network sees what the target's network saw,
in miniature. An emulated stage has the parameter tensors of the real stage, each scaled by
that factor (at least one element), sends an activation of the real one's size times the
factor, and holds for the target's forward and backward time per micro-batch: it computes its
(cheap) outputs first and then sleeps until the time is up, so the hold is the given time
whatever the outputs cost. The values it computes carry no meaning; the bytes and the times do.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from trainer.model import GPTConfig
from trainer.partition import split_layers, stage_tensor_sizes


def scaled_count(count: int, scale: float) -> int:
    """Elements of a tensor of `count` elements scaled by `scale` (at least one)."""
    return max(1, round(count * scale))


def hold_until(deadline: float) -> None:
    """Sleep until `deadline` (time.perf_counter); return at once when it has passed."""
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


class _Hold(torch.autograd.Function):
    """Forward: `x`'s values spread over the output's elements, then a hold of `forward_s`.
    Backward: a gradient for `x`, then a hold of `backward_s`. The parameters' gradients stay
    as the trainer zeroed them: the gradient sync moves their bytes, whatever they hold."""

    @staticmethod
    def forward(ctx, x, out_shape, forward_s, backward_s, *params):
        deadline = time.perf_counter() + forward_s
        ctx.x_shape, ctx.x_float = x.shape, x.is_floating_point()
        ctx.backward_s, ctx.n_params = backward_s, len(params)
        level = x.float().mean() if x.is_floating_point() else x.new_zeros((), dtype=torch.float)
        level = level + sum(p[0] for p in params)
        out = level.expand(out_shape).clone() if out_shape else level.clone()
        hold_until(deadline)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        deadline = time.perf_counter() + ctx.backward_s
        grad_x = grad_out.float().mean().expand(ctx.x_shape).clone() if ctx.x_float else None
        hold_until(deadline)
        return (grad_x, None, None, None, *[None] * ctx.n_params)


class EmulatedStage(nn.Module):
    """One pipeline stage of `gpt` in miniature: same interface and flags as `Stage`.

    `forward_s`/`backward_s` are its seconds per micro-batch; tensors are `scale` times the
    real stage's. The first stage takes tokens, the last returns a (meaningless) scalar loss.
    """

    def __init__(
        self,
        gpt: GPTConfig,
        stage: int,
        n_stages: int,
        layers: list[int] | None,
        seq: int,
        scale: float,
        forward_s: float,
        backward_s: float,
    ):
        super().__init__()
        self.stage, self.n_stages = stage, n_stages
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        self.forward_s, self.backward_s = forward_s, backward_s
        self.sample_numel = scaled_count(seq * gpt.n_embd, scale)
        counts = stage_tensor_sizes(gpt, split_layers(gpt.n_layer, n_stages, layers))[stage]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.full((scaled_count(n, scale),), 1e-3)) for n in counts
        )

    def activation_shape(self, micro_batch: int) -> tuple[int, ...]:
        """Shape of the activation (and its gradient) that leaves this stage per micro-batch."""
        return (micro_batch, self.sample_numel)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (first stage) or activations in; activations out, or a scalar on the last."""
        out_shape = () if self.is_last else self.activation_shape(x.shape[0])
        return _Hold.apply(x, out_shape, self.forward_s, self.backward_s, *self.weights)


class HeldOptimizer:
    """The optimizer of an emulated stage: `step` holds for the stage's optimizer time and
    leaves the weights as they are."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def step(self) -> None:
        """Hold for the optimizer's time."""
        hold_until(time.perf_counter() + self.seconds)
