"""The experiment matrix: a TOML spec of trainer settings and axes, validated before anything runs.

```toml
[matrix]
name = "local-demo"
inventory = "local"        # default inventory; `wanlab run -i` overrides it
repeats = 1

[trainer]                  # TrainerConfig fields shared by every cell
model = "cpu-small"
batch = 8
pipeline = 2
iterations = 4
warmup = 1

[axes]
profiles = ["default", "d10b1", "10ms/100mbit", "geo.toml"]   # names, short forms, files
dp_degrees = [1, 2]
micro_batches = [1]
engines = ["gpipe"]
dp_modes = ["ps"]
tcp = ["host", "ubuntu-2022", "big"]   # the hosts' TCP settings: as they are, presets, [tcp.*]
layouts = ["tp1-pp2", "tp2-pp1"]       # tensor × pipeline degrees (optional; else [trainer]'s)
dtypes = ["fp32", "bf16"]              # precision (optional)
recompute = [false, true]              # activation recompute (optional)

[tcp.big]                  # a TCP setting of this matrix; fields left out stay as the host's
rmem = [4096, 131072, 268435456]
slow_start_after_idle = false

[placement]                # which host runs which rank: experiments/placement.py
by = "order"               # or "ranks" (ranks = ["h3", "h0", ...]) or "label" (label = "region")

[probe]                    # the brief network measurement stored with every cell
seconds = 1.0
count = 20

[timeouts]
cell_s = 600
```
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experiments.axes import (
    AXES,
    TRAINER,
    axes_model,
    cell_class,
    owner_of,
    product_order,
)
from experiments.placement import Placement, place_ranks
from experiments.scalespec import ScaledProfile, ScaleOrigin, check_scale, with_factor
from experiments.workload.spec import WorkloadSpec, check_axis, load_workloads
from experiments.workload.template import render
from inventory.errors import ConfigError, config_error
from inventory.models import Fleet, Host
from inventory.names import Name
from inventory.tomlfile import read_toml
from netem.fleet import Target, load_target
from netem.tcp import HOST, PRESETS, TcpSettings
from trainer.config import TrainerConfig, load_config
from trainer.layout import Layout

_TOP_LEVEL = (
    "matrix", "trainer", "axes", "tcp", "placement", "probe", "timeouts", "scale", "workloads",
)  # fmt: skip
_TCP_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
DEFAULT_MAX_CELLS = 10_000
MAX_CELLS = 100_000
"""The most cells `matrix.max_cells` may allow: reading a matrix checks every cell's trainer
configuration (about a second per 100,000 cells)."""
_RUNNER_FIELDS = ("out", "iface")
"""Trainer fields the runner sets per cell."""


class MatrixHeader(BaseModel):
    """The [matrix] table."""

    model_config = ConfigDict(extra="forbid")
    name: Name = "matrix"
    """A name by the one rule (`inventory.names`): `wanlab scale` names its output after it."""
    inventory: str = "local"
    repeats: int = Field(1, ge=1, le=100, strict=True)
    max_cells: int = Field(DEFAULT_MAX_CELLS, ge=1, le=MAX_CELLS, strict=True)
    """A matrix with more cells is refused (raise it here for a bigger one, up to MAX_CELLS)."""


Axes = axes_model()


class ProbeSettings(BaseModel):
    """The [probe] table: how long to measure the network in every cell (0 s: RTT only)."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, ge=0, le=60, strict=True)
    count: int = Field(20, ge=1, le=1000, strict=True)


class Timeouts(BaseModel):
    """The [timeouts] table, in seconds."""

    model_config = ConfigDict(extra="forbid")
    cell_s: float = Field(600.0, gt=0, le=7 * 24 * 3600, strict=True)
    apply_s: float = Field(60.0, gt=0, le=3600, strict=True)
    lease_s: float = Field(30.0, ge=3, le=300, strict=True)
    """How long a host stays shaped without hearing from the controller (renewed every third
    of it while a cell runs)."""


Cell = cell_class(__name__)


def matrix_cells(axes: Axes, repeats: int) -> list[Cell]:
    """Every cell of these axes, profiles outermost (so a profile is applied once for its
    cells), then TCP settings, repeats innermost: the one order the runner, `--resume` and the
    reports share. A workload's cells (`axes.workloads`) take None on the trainer-only axes
    and are not multiplied by them."""
    order = product_order()
    cells: list[Cell] = []

    def fill(index: int, chosen: dict[str, Any]) -> None:
        if index == len(order):
            cells.extend(Cell(**chosen, repeat=repeat) for repeat in range(repeats))
            return
        axis = order[index]
        if axis.trainer_only and chosen.get("workload", TRAINER) != TRAINER:
            values = [None]
        else:
            values = getattr(axes, axis.key) or [None]
        for value in values:
            fill(index + 1, {**chosen, axis.field: value})

    fill(0, {})
    return cells


@dataclass(frozen=True)
class MatrixSpec:
    """A validated matrix: its header, trainer settings, axes and the resolved network targets."""

    source: Path
    header: MatrixHeader
    trainer: dict[str, Any]
    axes: Axes
    probe: ProbeSettings
    timeouts: Timeouts
    targets: dict[str, Target]
    tcp: dict[str, TcpSettings | None] = field(default_factory=lambda: {HOST: None})
    """Each TCP setting of the axis: None for `host` (left as it is)."""
    placement: Placement = field(default_factory=Placement)
    """Which host runs which rank (`experiments.placement`)."""
    scale: ScaleOrigin | None = None
    """Set in a scale model (`experiments.scale`): the target it stands for."""
    workloads: dict[str, WorkloadSpec] = field(default_factory=dict)
    """The [workloads.NAME] tables (`experiments.workload`)."""

    def workload(self, cell: Cell) -> WorkloadSpec | None:
        """The user's job a cell runs (None: the built-in trainer)."""
        return self.workloads.get(cell.workload)

    def layout(self, cell: Cell) -> Layout:
        """The cell's ranks: the trainer's layout, or a workload's DP degree of single ranks."""
        if self.workload(cell) is not None:
            return Layout(stages=1, dp_degree=cell.dp_degree)
        return self.trainer_config(cell).layout

    def place(self, cell: Cell, fleet: Fleet) -> list[Host]:
        """The host of each rank of `cell`, rank order."""
        return place_ranks(self.layout(cell), fleet, self.placement, str(self.source))

    def trainer_cells(self) -> list[Cell]:
        """The cells that run the built-in trainer."""
        return [cell for cell in self.cells() if cell.workload == TRAINER]

    def cells(self) -> list[Cell]:
        """Every cell, profiles outermost (so a profile is applied once for its cells)."""
        return matrix_cells(self.axes, self.header.repeats)

    def trainer_table(self, profile: str) -> dict[str, Any]:
        """[trainer] as the cells of `profile` take it (a scale model's profile with a factor of
        its own sizes its tensors by that factor)."""
        scaled = self._scaled(profile)
        if scaled is None:
            return self.trainer
        sized = scaled.trainer.model_dump(exclude_none=True)
        return with_factor(self.trainer, scaled.factor, sized)

    def trainer_config(self, cell: Cell) -> TrainerConfig:
        """The full trainer configuration of one cell."""
        return TrainerConfig(**(self.trainer_table(cell.profile) | cell.trainer_overrides()))

    def tcp_settings(self, cell: Cell) -> TcpSettings | None:
        """The TCP settings of one cell: its tcp axis value's (None: the hosts' own), in a
        scale model's profile with a factor of its own, that factor's."""
        scaled = self._scaled(cell.profile)
        if scaled is not None and cell.tcp in scaled.tcp:
            return scaled.tcp[cell.tcp]
        return self.tcp[cell.tcp]

    def _scaled(self, profile: str) -> ScaledProfile | None:
        """A scale model's entry for `profile` when it has a factor of its own."""
        return self.scale.profiles.get(profile) if self.scale is not None else None

    @property
    def max_world_size(self) -> int:
        """The most ranks any cell needs."""
        return max(self.layout(cell).world_size for cell in self.cells())


def _section(data: dict, name: str, model: type[BaseModel], file: str) -> BaseModel:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(file, name, "must be a table")
    try:
        return model(**table)
    except ValidationError as error:
        raise config_error(error, file, prefix=name) from None


def _resolve_profiles(specs: list[str], base: Path, file: str) -> dict[str, Target]:
    """Each profile of the axis: a name, a short form, or a file relative to the matrix (a file
    named twice, spelled two ways, is read once)."""
    targets: dict[str, Target] = {}
    read: dict[str, Target] = {}
    for index, spec in enumerate(specs):
        candidate = base / spec
        path_like = spec.endswith(".toml") or "/" in spec and os.path.isfile(candidate)
        key = os.path.realpath(candidate) if path_like else spec
        try:
            if key not in read:
                read[key] = load_target(str(candidate) if path_like else spec)
        except ConfigError as error:
            raise ConfigError(file, f"axes.profiles[{index}]", f"{spec!r}: {error}") from None
        targets[spec] = read[key]
    return targets


def cell_count(axes: Axes, repeats: int) -> int:
    """How many cells `axes` make with `repeats`, without making them: the trainer's cells
    multiplied by every axis, each workload's by the axes that are not the trainer's only."""

    def product(chosen) -> int:
        return math.prod(len(getattr(axes, a.key) or [None]) for a in product_order() if chosen(a))

    shared = product(lambda a: not a.trainer_only and a.key != "workloads")
    trainer_cells = product(lambda a: a.trainer_only) if TRAINER in axes.workloads else 0
    workloads = len([name for name in axes.workloads if name != TRAINER])
    return repeats * shared * (trainer_cells + workloads)


def check_cell_count(header: MatrixHeader, axes: Axes, file: str) -> None:
    """Refuse axes that make more cells than `matrix.max_cells`, before any cell is made."""
    n_cells = cell_count(axes, header.repeats)
    if n_cells > header.max_cells:
        raise ConfigError(
            file, "axes", f"makes {n_cells} cells, more than matrix.max_cells = {header.max_cells}"
        )


def load_matrix(path: str | Path) -> MatrixSpec:
    """Read and validate a matrix file: every cell's trainer config and profile is checked."""
    path = Path(path)
    file = str(path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(file, unknown[0], f"unknown section (expected {', '.join(_TOP_LEVEL)})")
    header = _section(data, "matrix", MatrixHeader, file)
    axes = _section(data, "axes", Axes, file)
    probe = _section(data, "probe", ProbeSettings, file)
    timeouts = _section(data, "timeouts", Timeouts, file)
    trainer = data.get("trainer", {})
    if not isinstance(trainer, dict):
        raise ConfigError(file, "trainer", "must be a table")
    for key in trainer:
        if key in _RUNNER_FIELDS or owner_of(key, lambda axis: not axis.optional):
            raise ConfigError(file, f"trainer.{key}", "is set per cell by the matrix; remove it")
        owner = owner_of(key, lambda axis: getattr(axes, axis.key) is not None)
        if owner is not None:
            raise ConfigError(
                file, f"trainer.{key}", f"is set per cell by axes.{owner.key}; remove it"
            )
    for axis in (axis for axis in AXES if axis.check is not None):
        for index, value in enumerate(getattr(axes, axis.key) or []):
            try:
                axis.check(value)
            except ValueError as error:
                raise ConfigError(file, f"axes.{axis.key}[{index}]", str(error)) from None
    try:
        load_config(None, trainer)
    except ConfigError as error:
        raise ConfigError(file, f"trainer.{error.field}", error.message) from None
    for axis in product_order():
        values = getattr(axes, axis.key) or []
        if len(set(values)) != len(values):
            raise ConfigError(file, f"axes.{axis.key}", "lists a value twice")
    check_cell_count(header, axes, file)
    targets = _resolve_profiles(axes.profiles, path.parent, file)
    tcp = _tcp_settings(data.get("tcp", {}), axes.tcp, file)
    placement = _section(data, "placement", Placement, file)
    workloads = load_workloads(data.get("workloads", {}), path.parent, file)
    check_axis(workloads, axes, file)
    scale = _section(data, "scale", ScaleOrigin, file) if "scale" in data else None
    if scale is not None:
        if workloads:
            raise ConfigError(file, "workloads", "a scale model emulates the built-in trainer only")
        check_scale(scale, trainer, axes, tcp, file)
    spec = MatrixSpec(
        path, header, trainer, axes, probe, timeouts, targets, tcp, placement, scale, workloads
    )
    _check_cells(spec, file)
    return spec


def _tcp_settings(tables: Any, axis: list[str], file: str) -> dict[str, TcpSettings | None]:
    """The settings each value of the tcp axis names: `host`, a preset, or a [tcp.NAME] table."""
    if not isinstance(tables, dict):
        raise ConfigError(file, "tcp", "must be a table of [tcp.NAME] tables")
    known: dict[str, TcpSettings | None] = {HOST: None, **PRESETS}
    for name, table in tables.items():
        where = f"tcp.{name}"
        if not _TCP_NAME.fullmatch(name):
            raise ConfigError(file, where, "a name is 1-40 lower-case letters, digits, '-_.'")
        if name in known:
            raise ConfigError(file, where, "is a built-in TCP setting; choose another name")
        if not isinstance(table, dict):
            raise ConfigError(file, where, "must be a table")
        try:
            known[name] = TcpSettings(**table)
        except ValidationError as error:
            raise config_error(error, file, prefix=where) from None
    for index, name in enumerate(axis):
        if name not in known:
            choices = ", ".join(known)
            raise ConfigError(file, f"axes.tcp[{index}]", f"unknown TCP setting {name!r} "
                              f"(known: {choices})")  # fmt: skip
    return {name: known[name] for name in axis}


def _check_cells(spec: MatrixSpec, file: str) -> None:
    """Every cell's trainer configuration; an error on a field an axis sets names the axis's
    value."""

    def listed(axis) -> bool:
        return getattr(spec.axes, axis.key) is not None

    for cell in spec.cells():
        workload = spec.workload(cell)
        if workload is not None and isinstance(workload.table.batch, str):
            values = {
                "dp_degree": cell.dp_degree,
                "world_size": cell.dp_degree,
                "micro_batch": cell.micro_batch,
                "repeat": cell.repeat,
                "iterations": workload.table.iterations,
                "warmup": workload.table.warmup,
            }
            text = render(workload.table.batch, values)
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(
                    file,
                    f"workloads.{workload.name}.batch",
                    f"gives {text!r} in cell {cell.cell_id}: not a whole number >= 1",
                )
    for cell in spec.trainer_cells():
        if cell.repeat > 0:
            continue  # a cell's repeats share its configuration
        try:
            load_config(None, {**spec.trainer_table(cell.profile), **cell.trainer_overrides()})
        except ConfigError as error:
            field = error.field or ""
            owner = owner_of(field, listed)
            if owner is not None:
                index = getattr(spec.axes, owner.key).index(getattr(cell, owner.field))
                raise ConfigError(file, f"axes.{owner.key}[{index}]", error.message) from None
            raise ConfigError(file, f"trainer.{field}", error.message) from None
