"""A matrix cell's coordinates: one table of axes, and every rule the rest derives from it.

Each `Axis` says how a matrix lists it (`[axes]`), what it is called in a cell, a record, a
report and `wanlab predict`, what it adds to the cell's id, which trainer fields it sets, how
reports label it, how calibration matches on it and whether a scale model keeps it. The matrix
(`experiments.matrix`: `Axes`, `Cell`), the record (`experiments.results`: `CellParams`), the
reports, the calibration, the scale model and the benches all read this table, so adding an
axis is one entry here plus the code that uses its value.

The table's order is the record's. Every other order is a rule over it:
- product and id: the network axes (profile, tcp) first, since a profile and a TCP setting are
  applied once for all their cells, then the rest in table order; repeats innermost;
- labels: the configuration's axes in table order, then the network's (a point is named by what
  ran, then by the network it ran on);
- the record: the axes every cell has, the repeat, then the axes with a neutral value (those a
  record written before them lacks).

Nothing is built at import: the users build their models from `AXES` when they are imported,
so an entry added before that (as tests/test_axes.py does) reaches every one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    create_model,
    model_validator,
)

from netem.tcp import HOST
from trainer.config import MAX_WORLD_SIZE, DType
from trainer.layout import parse_shape


class _Marker:
    """A named value no axis value can equal."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")
"""An axis's `default` when a matrix must list it."""
NO_NEUTRAL = _Marker("NO_NEUTRAL")
"""An axis's `neutral` when every cell names a value of its own."""
Degree = Annotated[int, Field(ge=1, le=MAX_WORLD_SIZE, strict=True)]
"""A DP degree or micro-batch size of an axis."""
TRAINER = "trainer"
"""The workloads axis's value for wanlab's own trainer (`experiments.workload` runs the others)."""
REPEAT = "repeat"
"""A cell's coordinate that is not an axis: which repeat of its point it is."""


@dataclass(frozen=True)
class Axis:
    """One coordinate of a matrix cell."""

    key: str
    """The [axes] key: `dp_degrees`."""
    field: str
    """The coordinate in a cell, a record, a report and a prediction: `dp_degree`."""
    kind: type
    """A value's type (str, int or bool), as records and scale models hold it."""
    default: Any
    """The [axes] default: a list, REQUIRED, or None (optional: cells take [trainer]'s)."""
    item: Any = None
    """How [axes] validates one value (None: as `kind`)."""
    neutral: Any = NO_NEUTRAL
    """The value that adds nothing to the id and sets no trainer field, and that a record from
    before the axis holds (tcp: `host`; an optional axis: None)."""
    network: bool = False
    """Applied once per group of cells (profile, tcp): outermost, labelled last."""
    id_text: Callable[[Any], str] = str
    """Its part of the cell id."""
    owns: tuple[str, ...] = ()
    """The trainer fields it sets: [trainer] may not set them while the axis is listed, and a
    trainer error on one names the axis's value."""
    trainer: Callable[[Any], dict[str, Any]] | None = None
    """The trainer fields a value sets (None: each field it owns, to the value)."""
    check: Callable[[Any], object] | None = None
    """Raises ValueError, with its message, for a value [axes] must refuse."""
    label: Callable[[Any], str | None] | None = None
    """A report row's text for it (None, or a label of None: nothing)."""
    always_labelled: bool = False
    """Labelled where every point has the same value (else only where it varies)."""
    match: int | None = None
    """Calibration: a measured cell shares this coordinate with the cell it calibrates, as long
    as one does; the coordinates of the highest `match` are let go first (None: never compared,
    the profile being what is predicted)."""
    scale_kept: bool = False
    """A scale model keeps it for its cells (an optional axis it does not keep is refused)."""
    column: tuple[str, Callable[[dict], Any]] | None = None
    """`wanlab predict`'s column for it: a name and the text from a cell's params (None: no
    column)."""
    former_field: str | None = None
    """What records written before the coordinate was renamed call it."""
    trainer_only: bool = False
    """Means nothing to a workload (`experiments.workload`): a workload's cell takes None
    there and is not multiplied by it."""

    @property
    def optional(self) -> bool:
        """A matrix may leave it out."""
        return self.default is None

    @property
    def has_neutral(self) -> bool:
        """Some cells hold no value of their own: a record from before the axis may lack it."""
        return self.neutral is not NO_NEUTRAL

    def trainer_fields(self, value: Any) -> dict[str, Any]:
        """The trainer fields `value` sets (none for the neutral value)."""
        if self.has_neutral and value == self.neutral:
            return {}
        if self.trainer is not None:
            return self.trainer(value)
        return {name: value for name in self.owns}

    def id_part(self, value: Any) -> str | None:
        """Its part of a cell id (None for the neutral value, and for None: a workload's cell
        on a trainer-only axis)."""
        if value is None or self.has_neutral and value == self.neutral:
            return None
        return self.id_text(value)


def _layout_fields(layout: str) -> dict[str, int]:
    tensor, pipeline = parse_shape(layout)
    return {"tensor": tensor, "pipeline": pipeline}


def _workload_label(row) -> str | None:
    return None if row.workload == TRAINER else str(row.workload)


def _text(value: Any) -> str | None:
    """A trainer-only value as a report's label: nothing where a workload's cell has none."""
    return None if value is None or value == "" else str(value)


def _recompute_column(params: dict) -> str | None:
    recompute = params.get("recompute")
    return None if recompute is None else ("yes" if recompute else "no")


AXES: tuple[Axis, ...] = (
    Axis(
        "profiles", "profile", str, REQUIRED, network=True, scale_kept=True,
        column=("profile", lambda p: p["profile"]),
    ),
    Axis(
        "dp_degrees", "dp_degree", int, [1], item=Degree, id_text=lambda v: f"dp{v}",
        owns=("dp_degree",), label=lambda row: f"DP {row.dp_degree}", always_labelled=True,
        match=0, scale_kept=True, column=("dp_degree", lambda p: p["dp_degree"]),
        former_field="dp",
    ),
    Axis(
        "micro_batches", "micro_batch", int, [1], item=Degree, id_text=lambda v: f"mb{v}",
        owns=("micro_batch",), label=lambda row: f"mb {row.micro_batch}", match=0,
        scale_kept=True, column=("mb", lambda p: p["micro_batch"]),
    ),
    Axis(
        "workloads", "workload", str, [TRAINER], neutral=TRAINER,
        id_text=lambda v: f"workload={v}", label=_workload_label, match=0,
        column=("workload", lambda p: None if p.get("workload", TRAINER) == TRAINER
                else p["workload"]),
    ),
    Axis(
        "engines", "engine", str, ["gpipe"], owns=("engine",), label=lambda row: _text(row.engine),
        match=2, trainer_only=True,
        column=("engine", lambda p: f"{p['engine']}/{p['dp_mode']}" if p["engine"] else None),
    ),
    Axis(
        "dp_modes", "dp_mode", str, ["ps"], owns=("dp_mode",),
        label=lambda row: _text(row.dp_mode) if row.dp_degree > 1 else None, match=2,
        scale_kept=True, trainer_only=True,
    ),
    Axis(
        "tcp", "tcp", str, [HOST], neutral=HOST, network=True, id_text=lambda v: f"tcp={v}",
        label=lambda row: f"TCP {row.tcp}", match=3, scale_kept=True,
    ),
    Axis(
        "layouts", "layout", str, None, neutral=None, owns=("tensor", "pipeline", "layers"),
        trainer=_layout_fields, check=parse_shape, label=lambda row: _text(row.layout), match=1,
        column=("layout", lambda p: p.get("layout")),
        trainer_only=True,
    ),
    Axis(
        "dtypes", "dtype", str, None, item=DType, neutral=None, owns=("dtype",),
        label=lambda row: _text(row.dtype), match=1, column=("dtype", lambda p: p.get("dtype")),
        trainer_only=True,
    ),
    Axis(
        "recompute", "recompute", bool, None, item=StrictBool, neutral=None,
        id_text=lambda v: "recompute" if v else "stored", owns=("recompute",),
        label=lambda row: None if row.recompute in (None, "") else
        ("recompute" if row.recompute else "stored activations"), match=1,
        column=("recompute", _recompute_column),
        trainer_only=True,
    ),
)  # fmt: skip
"""Every axis, in the record's order."""


def product_order() -> list[Axis]:
    """The axes as cells are made and ids written: the network's first, then the rest."""
    return [a for a in AXES if a.network] + [a for a in AXES if not a.network]


def label_order() -> list[Axis]:
    """The axes as a point's label names them: the configuration's, then the network's."""
    return [a for a in AXES if not a.network] + [a for a in AXES if a.network]


def record_order() -> list[str]:
    """A record's coordinates: the axes every cell has, the repeat, then those with a neutral
    value."""
    always = [a.field for a in AXES if not a.has_neutral]
    return [*always, REPEAT, *(a.field for a in AXES if a.has_neutral)]


def point_keys() -> list[str]:
    """A point's coordinates (a cell's, without the repeat), in product order."""
    return [a.field for a in product_order()]


def variant_keys() -> list[str]:
    """The coordinates of the axes a matrix may leave out."""
    return [a.field for a in AXES if a.optional]


def scale_axes() -> list[Axis]:
    """The axes a scale model's cells keep, in product order."""
    return [a for a in product_order() if a.scale_kept]


def match_tiers() -> list[tuple[str, ...]]:
    """Calibration's key tuples, strictest first: every compared coordinate and the repeat,
    then every compared one, then fewer and fewer, the highest `match` let go first."""
    levels = sorted({a.match for a in AXES if a.match is not None}, reverse=True)
    tiers = [tuple(a.field for a in AXES if a.match is not None and a.match <= level)
             for level in levels]  # fmt: skip
    return [(*tiers[0], REPEAT), *tiers]


def owner_of(trainer_field: str, listed: Callable[[Axis], bool]) -> Axis | None:
    """The axis among those `listed` that sets `trainer_field`, if one does."""
    return next((a for a in AXES if listed(a) and trainer_field in a.owns), None)


def predict_columns(params: dict) -> dict[str, Any]:
    """A predicted cell's coordinates as `wanlab predict`'s columns (a column whose axis the
    matrix leaves out is not shown)."""
    shown = {a.column[0]: a.column[1](params) for a in AXES if a.column is not None}
    return {name: value for name, value in shown.items() if value is not None}


def axes_model() -> type[BaseModel]:
    """The [axes] table's model: a list of values per axis, in table order."""
    fields: dict[str, Any] = {}
    for axis in AXES:
        values = list[axis.kind if axis.item is None else axis.item]
        if axis.default is REQUIRED:
            fields[axis.key] = (values, Field(min_length=1))
        elif axis.optional:
            fields[axis.key] = (values | None, Field(default=None, min_length=1))
        else:
            fields[axis.key] = (values, Field(default=axis.default, min_length=1))
    return create_model(
        "Axes", __config__=ConfigDict(extra="forbid"),
        __doc__="The [axes] table: every combination of these is one cell.", **fields,
    )  # fmt: skip


def _coordinate_fields(kind: Callable[[Axis], Any]) -> dict[str, Any]:
    """A model's fields for the coordinates, in record order (a neutral value the default)."""
    by_field = {a.field: a for a in AXES}
    fields: dict[str, Any] = {}
    for name in record_order():
        axis = by_field.get(name)
        if axis is None:
            fields[name] = (int, 0)
        elif not axis.has_neutral:
            fields[name] = (kind(axis) | None if axis.trainer_only else kind(axis), ...)
        else:
            fields[name] = (kind(axis) | None if axis.neutral is None else kind(axis), axis.neutral)
    return fields


class RecordedCoordinates(BaseModel):
    """Reads coordinates written before one was renamed under its new name."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        for axis in AXES:
            old = axis.former_field
            if old is not None and old in values and axis.field not in values:
                values = {**values, axis.field: values[old]}
                del values[old]
        return values


def record_params_model() -> type[BaseModel]:
    """A record's coordinates (`CellRecord.params`): each axis's value, the repeat; a record
    from before an axis holds its neutral value, one from before a rename is read renamed."""
    return create_model(
        "CellParams", __base__=RecordedCoordinates,
        __doc__="A cell's coordinates in its matrix (`experiments.matrix.Cell`).",
        **_coordinate_fields(lambda axis: axis.kind),
    )  # fmt: skip


def scale_cell_fields() -> dict[str, Any]:
    """A scale model cell's coordinates (the axes it keeps), strictly typed, as model fields."""
    fields: dict[str, Any] = {}
    for axis in scale_axes():
        kind = Annotated[axis.kind, Strict()]
        fields[axis.field] = (kind, axis.neutral) if axis.has_neutral else (kind, ...)
    return fields


class CellCoordinates:
    """What a cell (`cell_class`) does with its coordinates."""

    _product: ClassVar[tuple[Axis, ...]]
    _table: ClassVar[tuple[Axis, ...]]

    @property
    def point_id(self) -> str:
        """The id of the cell's point (its repeats share it): each axis's part in product order
        (a neutral value adds nothing, so ids from before an axis still match)."""
        parts = (axis.id_part(getattr(self, axis.field)) for axis in self._product)
        return "|".join(part for part in parts if part is not None)

    @property
    def cell_id(self) -> str:
        """Stable identifier, used to resume: the point's id and the repeat."""
        return f"{self.point_id}|r{self.repeat}"

    def params(self) -> dict[str, Any]:
        """The cell's coordinates as a plain dict (an axis the matrix leaves out: None)."""
        return {**{a.field: getattr(self, a.field) for a in self._table}, REPEAT: self.repeat}

    def trainer_overrides(self) -> dict[str, Any]:
        """The trainer fields this cell sets."""
        overrides: dict[str, Any] = {}
        for axis in self._table:
            overrides |= axis.trainer_fields(getattr(self, axis.field))
        return overrides


def cell_class(module: str) -> type:
    """The frozen dataclass of one matrix cell (made for `module`): a field per axis and the
    repeat, in record order."""
    by_field = {a.field: a for a in AXES}
    fields = []
    for name in record_order():
        axis = by_field.get(name)
        if axis is None:
            fields.append((name, int))
        elif not axis.has_neutral:
            fields.append((name, axis.kind))
        else:
            fields.append((name, axis.kind, field(default=axis.neutral)))
    cls = make_dataclass(
        "Cell", fields, bases=(CellCoordinates,), frozen=True,
        namespace={"__doc__": "One point of the matrix, one repeat."},
    )  # fmt: skip
    cls._product, cls._table = tuple(product_order()), AXES
    cls.__module__ = module
    return cls
