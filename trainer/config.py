"""The trainer's configuration: one pydantic model, read from a TOML file and/or flags.

Every validation failure is an `inventory.errors.ConfigError` naming the source and the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from inventory.errors import ConfigError, FieldProblem, config_error
from inventory.tomlfile import read_toml
from trainer.layout import Layout
from trainer.model import CONFIGS, GPTConfig

COMMAND_LINE = "command line"
MAX_WORLD_SIZE = 4096
"""The most ranks a configuration may have (tensor × pipeline × dp_degree)."""
MAX_MICRO_BATCHES = 4096
"""The most micro-batches an iteration may have (batch / micro_batch): the cost model plays
each one out, so this bounds one prediction to seconds."""
MAX_ITERATIONS = 1_000_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
StageMs = Annotated[float, Field(ge=0, le=3.6e6, allow_inf_nan=False, strict=True)]
"""Emulated milliseconds of one stage's step (at most an hour)."""
DpMode = Literal["ps", "sharded-ps", "ps-star", "allreduce", "fsdp"]
"""How a stage's replicas average their gradients (trainer/dataparallel.py)."""
Engine = Literal["gpipe", "pipelining-gpipe", "pipelining-1f1b"]
"""What runs a pipeline: wanlab's GPipe, then the `torch.distributed.pipelining` schedules
(trainer/engines.py)."""
GpipeSchedule = Literal["gpipe", "reference"]
"""Engine `gpipe`'s schedule: wanlab's, or the reference system's (trainer/gpipe.py)."""
HeadKind = Literal["lm", "classification"]
"""What the last stage ends in: a language-model head, or the reference's classification head
(trainer/model.py)."""
DType = Literal["fp32", "fp16", "bf16"]
"""The precision a stage computes and sends activations in."""
DP_MODES: tuple[str, ...] = get_args(DpMode)
ENGINES: tuple[str, ...] = get_args(Engine)


class Emulation(BaseModel):
    """Emulated compute (trainer/emulated.py): each stage holds its rank for the given times and
    moves tensors `scale` times the real model's. Times are per sequence of a micro-batch (a
    micro-batch of m sequences holds m times as long), one value per stage or one for all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(gt=0, le=1, allow_inf_nan=False, strict=True)
    forward_ms: list[StageMs] = Field(min_length=1)
    backward_ms: list[StageMs] = Field(min_length=1)
    optimizer_ms: list[StageMs] = Field([0.0], min_length=1)

    def per_stage(self, field: str, n_stages: int) -> list[float]:
        """`field`'s milliseconds for each of `n_stages` stages."""
        values = getattr(self, field)
        return values * n_stages if len(values) == 1 else list(values)

    def stage_seconds(self, stage: int, n_stages: int, micro_batch: int) -> tuple[float, ...]:
        """(forward, backward) seconds per micro-batch and optimizer seconds of `stage`."""
        forward, backward, optimizer = (
            self.per_stage(field, n_stages)[stage] / 1000
            for field in ("forward_ms", "backward_ms", "optimizer_ms")
        )
        return forward * micro_batch, backward * micro_batch, optimizer


class TrainerConfig(BaseModel):
    """One training run. `batch` is sequences per pipeline per iteration; the global batch is
    batch × dp_degree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "tiny"
    head: HeadKind | None = None
    """The model's head over the named model's (`lm`): `classification` ends the last stage in
    a pooler and 2 logits (trainer/model.py)."""
    vocab_size: int | None = Field(None, ge=2, le=2**24, strict=True)
    """The embedding's rows over the named model's vocabulary."""
    batch: int = Field(8, ge=1, strict=True)
    micro_batch: int = Field(1, ge=1, strict=True)
    pipeline: int = Field(1, ge=1, strict=True)
    dp_degree: int = Field(1, ge=1, le=MAX_WORLD_SIZE, strict=True)
    tensor: int = Field(1, ge=1, le=1024, strict=True)
    """Tensor-parallel degree: each stage's heads and MLP units split over this many ranks."""
    dp_mode: DpMode = "ps"
    ps_bucket_mb: float = Field(0.0, ge=0, le=4096, allow_inf_nan=False, strict=True)
    """`ps`/`sharded-ps`: gradients per reduce-and-broadcast, in MiB (0: one per tensor)."""
    ps_chunk_kb: float = Field(256, ge=1, le=65536, allow_inf_nan=False, strict=True)
    """`ps`/`sharded-ps` on gloo: the piece each hop of the chain forwards at a time, in KiB."""
    ps_flat: StrictBool = False
    """`ps`/`sharded-ps`: one bucket of the stage's whole gradient (flattened into one tensor),
    so `ps` is one reduce and one broadcast, chunked as any bucket is."""
    engine: Engine = "gpipe"
    gpipe_schedule: GpipeSchedule = "gpipe"
    layers: list[StrictInt] | None = None
    seq_len: int | None = Field(None, ge=1, strict=True)
    iterations: int = Field(5, ge=1, le=MAX_ITERATIONS, strict=True)
    warmup: int = Field(1, ge=0, strict=True)
    seed: int = Field(0, ge=0, lt=2**63, strict=True)
    dtype: DType = "fp32"
    loss_scale: float = Field(1024.0, gt=0, allow_inf_nan=False, strict=True)
    recompute: StrictBool = False
    dataset: str = "synthetic"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0, allow_inf_nan=False, strict=True)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: Path | None = None
    timeout_s: float = Field(120.0, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False, strict=True)
    threads: int | None = Field(None, ge=1, le=1024, strict=True)
    iface: str | None = None
    emulate: Emulation | None = None
    """Emulated compute instead of the model's own (the scale model; labelled in reports)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        if self.model not in CONFIGS:
            raise FieldProblem("model", f"unknown model {self.model!r}; known: {sorted(CONFIGS)}")
        gpt = self.gpt
        if self.batch % self.micro_batch:
            raise FieldProblem(
                "micro_batch", f"micro-batch {self.micro_batch} does not divide batch {self.batch}"
            )
        if self.n_micro > MAX_MICRO_BATCHES:
            raise FieldProblem(
                "batch", f"batch {self.batch} / micro-batch {self.micro_batch} = {self.n_micro} "
                f"micro-batches, more than {MAX_MICRO_BATCHES}",
            )  # fmt: skip
        if self.pipeline > gpt.n_layer:
            raise FieldProblem(
                "pipeline",
                f"{self.pipeline} stages but model {self.model!r} has {gpt.n_layer} layers",
            )
        if self.world_size > MAX_WORLD_SIZE:
            raise FieldProblem(
                "dp_degree", f"layout {self.layout.describe()} has {self.world_size} ranks, more "
                f"than {MAX_WORLD_SIZE}",
            )  # fmt: skip
        if self.layers is not None and (
            len(self.layers) != self.pipeline
            or sum(self.layers) != gpt.n_layer
            or min(self.layers) < 1
        ):
            raise FieldProblem(
                "layers",
                f"{self.layers} must list {self.pipeline} positive counts summing to {gpt.n_layer}",
            )
        if self.seq_len is not None and self.seq_len > gpt.block_size:
            raise FieldProblem(
                "seq_len", f"{self.seq_len} exceeds model {self.model!r}'s {gpt.block_size}"
            )
        if self.warmup >= self.iterations:
            raise FieldProblem(
                "warmup", f"warm-up {self.warmup} leaves none of {self.iterations} iterations timed"
            )
        if self.engine != "gpipe" and self.warmup < 1:
            raise FieldProblem(
                "warmup", f"engine {self.engine!r} infers shapes on its first step: warm-up ≥ 1"
            )
        if self.gpipe_schedule != "gpipe" and self.engine != "gpipe":
            raise FieldProblem(
                "gpipe_schedule", f"applies to engine 'gpipe' only, not {self.engine!r}"
            )
        if self.engine == "pipelining-1f1b" and self.n_micro < self.pipeline:
            raise FieldProblem(
                "engine",
                f"pipelining-1f1b needs micro-batches ≥ stages: batch {self.batch} / "
                f"micro-batch {self.micro_batch} = {self.n_micro} < pipeline {self.pipeline}",
            )
        if self.ps_flat and self.ps_bucket_mb:
            raise FieldProblem("ps_bucket_mb", "ps_flat is one bucket of the whole stage: no size")
        if self.tensor > 1:
            if gpt.n_head % self.tensor:
                raise FieldProblem(
                    "tensor",
                    f"{self.tensor} does not divide model {self.model!r}'s {gpt.n_head} heads",
                )
            if self.emulate is not None:
                raise FieldProblem("tensor", "tensor parallelism runs on real compute only")
        if self.dp_mode == "fsdp" and self.emulate is not None:
            raise FieldProblem("dp_mode", "fsdp runs on real compute only")
        if self.emulate is not None:
            if self.engine != "gpipe":
                raise FieldProblem(
                    "emulate", f"emulated compute runs on engine 'gpipe' only, not {self.engine!r}"
                )
            for field in ("forward_ms", "backward_ms", "optimizer_ms"):
                if len(getattr(self.emulate, field)) not in (1, self.pipeline):
                    raise FieldProblem(
                        f"emulate.{field}", f"give one value or one per stage ({self.pipeline})"
                    )
        if self.dataset != "synthetic":
            if not os.path.isfile(self.dataset):  # False, not an error, for a name too long
                raise FieldProblem("dataset", f"{self.dataset!r} is neither 'synthetic' nor a file")
            if gpt.vocab_size < 256:
                raise FieldProblem("dataset", "a text file needs a model vocabulary of ≥ 256 bytes")
        return self

    @property
    def gpt(self) -> GPTConfig:
        """The model's shape: the named model's, with this head and vocabulary where given."""
        given = {"head": self.head, "vocab_size": self.vocab_size}
        return replace(CONFIGS[self.model], **{k: v for k, v in given.items() if v is not None})

    @property
    def seq(self) -> int:
        """Tokens per sequence."""
        return self.seq_len or self.gpt.block_size

    @property
    def ps_bucket_bytes(self) -> float:
        """Gradient bytes per bucket of a `ps` chain: 0 for one per tensor, infinite for one of
        the whole stage (`ps_flat`)."""
        return math.inf if self.ps_flat else int(self.ps_bucket_mb * 2**20)

    @property
    def n_micro(self) -> int:
        """Micro-batches per iteration."""
        return self.batch // self.micro_batch

    @property
    def layout(self) -> Layout:
        """Where each rank sits: tensor × pipeline × dp_degree."""
        return Layout(self.pipeline, self.dp_degree, self.tensor)

    @property
    def world_size(self) -> int:
        """Ranks the run needs: tensor × pipeline × dp_degree."""
        return self.layout.world_size

    @property
    def applied_loss_scale(self) -> float:
        """The factor the loss is scaled by before backward: `loss_scale` under fp16, else 1."""
        return self.loss_scale if self.dtype == "fp16" else 1.0


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Build a TrainerConfig from a TOML file (optional) with `overrides` on top."""
    values: dict[str, Any] = {}
    source = str(path) if path is not None else COMMAND_LINE
    if path is not None:
        values = read_toml(Path(path))  # a FIFO or a huge file is refused, not waited on
        values = {key.replace("-", "_"): value for key, value in values.items()}
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    if given:
        source = COMMAND_LINE if path is None else f"{path} (+ command line)"
    try:
        return TrainerConfig(**(values | given))
    except ValidationError as exc:
        raise config_error(exc, source) from None


def check_world(cfg: TrainerConfig, world_size: int, source: str = "environment") -> None:
    """The launched world must hold exactly tensor × pipeline × dp_degree ranks."""
    if world_size != cfg.world_size:
        raise ConfigError(
            source,
            "WORLD_SIZE",
            f"{world_size} ranks launched but layout {cfg.layout.describe()} needs "
            f"{cfg.world_size}",
        )
