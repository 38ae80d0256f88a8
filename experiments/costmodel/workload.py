"""What one training iteration computes and moves, stage by stage, derived from its configuration.

FLOPs are counted per token as matrix multiplies: a block's forward is 2·(12·d²) for its
weights plus 4·d·T for attention scores and their weighted sum; a language-model head's
forward is 2·V·d per token, a classification head's 2·(d² + d·classes) per sequence (one
token through its pooler); the embedding is a lookup and counts nothing. Backward is twice
the forward; activation recompute adds one more forward to the backward. Summed over the
stages this is the usual 6·N + 12·L·d·T less the share of 6·N of what is not multiplied:
embeddings, biases, norms.

Under tensor parallelism of degree T (trainer/tensorparallel.py) a rank computes 1/T of each
block (the head is replicated) and holds one shard's parameters; each block all-reduces its
activations twice in the forward and twice in the backward (twice more with recompute).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.dataparallel import bucket_spans
from trainer.emulated import scaled_count
from trainer.layout import Layout
from trainer.model import GPTConfig
from trainer.partition import block_sizes, split_layers, stage_tensor_sizes

WIRE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
"""Bytes per activation element on the wire: activations travel in the compute dtype."""
GRAD_BYTES = 4
"""Bytes per gradient element in the sync: parameters (and so gradients) stay fp32."""
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "sgd": 12}
"""Memory an optimizer step moves per fp32 parameter: AdamW reads parameter, gradient and two
moments (16 B) and writes three of them (12 B); SGD without momentum reads parameter and
gradient and writes the parameter."""


@dataclass(frozen=True)
class Workload:
    """One iteration of one configuration: shapes, sizes in bytes and FLOPs per stage."""

    layout: Layout
    """Stages × DP degree × tensor shards, ranked as trainer/layout.py ranks them; a stage's
    tensor shards sit on T consecutive ranks."""
    n_micro: int
    micro_batch: int
    seq: int
    dp_mode: str
    schedule: str
    activation_bytes: float
    stage_params: np.ndarray
    forward_flops: np.ndarray
    backward_flops: np.ndarray
    sync_buckets: tuple[np.ndarray, ...] = ()
    """`ps`/`sharded-ps`: each stage's buckets, in bytes of gradient, in the order they go."""
    chunk_bytes: float = 256 * 1024
    """`ps`/`sharded-ps`: the piece each hop of a chain forwards at a time."""
    tensor_allreduces: tuple[np.ndarray, np.ndarray] | None = None
    """Per stage, the activation all-reduces of one micro-batch's forward and backward."""
    ring_step_latencies: int = 2
    """One-way latencies a step of a ring collective waits: gloo's 2 (a segment is sent once
    the receiver's notice that it posted the receive has arrived, then crosses), NCCL's 1 (its
    receivers hand out credit ahead)."""
    stage_blocks: np.ndarray | None = None
    """Transformer blocks per stage (`fsdp` shards and gathers each block on its own)."""
    block_params: float = 0.0
    """Parameters of one block (of one tensor shard)."""
    optimizer: str = "adamw"
    """The optimizer each stage steps (`OPTIMIZER_BYTES_PER_PARAM`)."""

    def tensor_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) all-reduces per micro-batch of each stage (zeros when T = 1)."""
        if self.tensor_allreduces is None:
            zeros = np.zeros(self.layout.stages)
            return zeros, zeros
        return self.tensor_allreduces

    @property
    def optimizer_bytes(self) -> np.ndarray:
        """Bytes each stage's optimizer step moves through memory."""
        return self.stage_params * OPTIMIZER_BYTES_PER_PARAM[self.optimizer]

    @property
    def grad_bytes(self) -> np.ndarray:
        """Bytes of each stage's gradients, what its sync moves per replica and direction."""
        return self.stage_params * GRAD_BYTES


def stage_forward_flops_per_token(
    gpt: GPTConfig, layers: list[range], seq: int, tensor: int = 1
) -> np.ndarray:
    """Forward FLOPs per token of each stage (of one shard of it under tensor parallelism)."""
    d = gpt.n_embd
    per_block = (2 * 12 * d * d + 4 * d * seq) / tensor
    flops = np.array([len(own) * per_block for own in layers], dtype=float)
    flops[-1] += gpt.head_flops_per_sequence(seq) / seq
    return flops


def make_workload(
    gpt: GPTConfig,
    *,
    pipeline: int,
    dp_degree: int,
    batch: int,
    micro_batch: int,
    seq: int,
    dtype: str = "fp32",
    recompute: bool = False,
    dp_mode: str = "ps",
    schedule: str = "gpipe",
    layers: list[int] | None = None,
    bucket_bytes: float = 0,
    chunk_bytes: int = 256 * 1024,
    tensor_scale: float = 1.0,
    tensor: int = 1,
    optimizer: str = "adamw",
) -> Workload:
    """The workload of `pipeline` stages × `dp_degree` replicas, `batch` sequences per pipeline.

    `tensor_scale` < 1: every tensor (activation, parameter, gradient) scaled by it, as an
    emulated run (trainer/emulated.py) moves them; FLOPs stay the full model's.
    """
    split = split_layers(gpt.n_layer, pipeline, layers)
    tokens = micro_batch * seq
    forward = stage_forward_flops_per_token(gpt, split, seq, tensor) * tokens
    backward = forward * (3.0 if recompute else 2.0)
    tensors = [
        [scaled_count(size, tensor_scale) for size in sizes]
        for sizes in stage_tensor_sizes(gpt, split, tensor)
    ]
    blocks = np.array([len(own) for own in split], dtype=float)
    allreduces = None
    if tensor > 1:
        allreduces = (2 * blocks, (4 if recompute else 2) * blocks)
    buckets = []
    for sizes in tensors:
        nbytes = [size * GRAD_BYTES for size in sizes]
        spans = bucket_spans(nbytes, bucket_bytes)
        buckets.append(np.array([sum(nbytes[span.start : span.stop]) for span in spans], float))
    return Workload(
        layout=Layout(pipeline, dp_degree, tensor),
        n_micro=batch // micro_batch,
        micro_batch=micro_batch,
        seq=seq,
        dp_mode=dp_mode,
        schedule=schedule,
        activation_bytes=float(
            micro_batch * scaled_count(seq * gpt.n_embd, tensor_scale) * WIRE_BYTES[dtype]
        ),
        stage_params=np.array([sum(sizes) for sizes in tensors], dtype=float),
        forward_flops=forward,
        backward_flops=backward,
        sync_buckets=tuple(buckets),
        chunk_bytes=float(chunk_bytes),
        tensor_allreduces=allreduces,
        stage_blocks=blocks,
        block_params=float(sum(scaled_count(n, tensor_scale) for n in block_sizes(gpt, tensor))),
        optimizer=optimizer,
    )
