"""The [scale] table of a matrix `wanlab scale` wrote (`experiments.scale`): the target it
models, each cell's target cell and predicted time, and the profiles whose tensors and TCP
windows take a factor of their own; read and checked with the rest of the matrix
(`experiments.matrix`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from experiments.axes import scale_axes, scale_cell_fields
from inventory.errors import ConfigError
from netem.tcp import TcpSettings

ScaleCell = create_model(
    "ScaleCell", __config__=ConfigDict(extra="forbid"),
    __doc__="One cell of a scale model: its lab coordinates (the axes a scale model keeps) and "
    "the target cell's predicted time, and its own measured time (mean over its repeats) when "
    "the target is a results folder.",
    **scale_cell_fields(),
    target_profile=(str, ...),
    predicted_s=(float, Field(gt=0, allow_inf_nan=False, strict=True)),
    measured_s=(float | None, Field(None, gt=0, allow_inf_nan=False, strict=True)),
)  # fmt: skip


class SizedTrainer(BaseModel):
    """The trainer fields a scale model's factor sizes (`experiments.scale`): the pieces and
    buckets of the gradient chains."""

    model_config = ConfigDict(extra="forbid")
    ps_chunk_kb: float | None = Field(None, strict=True)
    ps_bucket_mb: float | None = Field(None, strict=True)


class ScaledProfile(BaseModel):
    """A profile of a scale model whose tensors and TCP windows take a factor of their own: the
    trainer fields that factor sizes and every TCP setting of the matrix, scaled by it."""

    model_config = ConfigDict(extra="forbid")
    factor: float = Field(gt=0, le=1, allow_inf_nan=False, strict=True)
    trainer: SizedTrainer = Field(default_factory=SizedTrainer)
    tcp: dict[str, TcpSettings]


class ScaleOrigin(BaseModel):
    """The [scale] table of a matrix `wanlab scale` wrote: the target it models."""

    model_config = ConfigDict(extra="forbid")
    target: str
    calibration: str
    factor: float = Field(gt=0, le=1, allow_inf_nan=False, strict=True)
    """The factor of the [trainer] and [tcp] tables: every profile's but those in `profiles`."""
    baseline_profile: str
    """The target profile that slowdowns are measured against."""
    cells: list[ScaleCell] = Field(min_length=1)
    profiles: dict[str, ScaledProfile] = Field(default_factory=dict)
    """Lab profile → its own factor, where the lab carries a larger one at its rate."""


def with_factor(trainer: dict[str, Any], factor: float, sized: dict[str, Any]) -> dict[str, Any]:
    """An emulated [trainer] table with its tensors × `factor`: `sized` holds the fields that
    factor sizes besides the emulated stages' own tensors."""
    return trainer | sized | {"emulate": trainer["emulate"] | {"scale": factor}}


def check_scale(scale: ScaleOrigin, trainer: dict, axes: BaseModel, tcp: dict, file: str) -> None:
    """Every cell of a scale model lies on the matrix's `axes`, its baseline is a target profile
    of its cells; a profile's own factor needs emulated compute, a profile of the axis, and every
    [tcp.NAME] setting of the axis scaled by it."""
    for index, cell in enumerate(scale.cells):
        for axis in scale_axes():
            if getattr(cell, axis.field) not in getattr(axes, axis.key):
                raise ConfigError(
                    file, f"scale.cells[{index}].{axis.field}",
                    f"{getattr(cell, axis.field)!r} is not a value of axes.{axis.key}",
                )  # fmt: skip
    targets = sorted({cell.target_profile for cell in scale.cells})
    if scale.baseline_profile not in targets:
        raise ConfigError(
            file, "scale.baseline_profile",
            f"{scale.baseline_profile!r} is not a target_profile of scale.cells ({targets})",
        )  # fmt: skip
    scaled_tcp = {name for name, settings in tcp.items() if settings is not None}
    for profile, scaled in scale.profiles.items():
        where = f"scale.profiles.{profile}"
        if "emulate" not in trainer:
            raise ConfigError(file, where, "a factor of its own needs [trainer.emulate]")
        if profile not in axes.profiles:
            raise ConfigError(file, where, "is not a profile of axes.profiles")
        if set(scaled.tcp) != scaled_tcp:
            raise ConfigError(
                file, f"{where}.tcp", f"must scale the [tcp] settings {sorted(scaled_tcp)}, "
                f"not {sorted(scaled.tcp)}",
            )  # fmt: skip
