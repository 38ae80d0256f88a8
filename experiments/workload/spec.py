"""A matrix's `[workloads.NAME]` tables: a user's training job as a variant of the matrix.

```toml
[workloads.deepspeed]
command = ["{python}", "deepspeed_train.py", "--steps", "{iterations}",
           "--micro-batch", "{micro_batch}"]
ship = ["deepspeed_train.py"]     # beside the matrix; copied into workdir on every host
timing = "deepspeed"              # deepspeed | lightning | jsonl | regex
iterations = 30                   # step timings the job prints, warm-up included
warmup = 2
batch = "{micro_batch}"           # samples per rank per iteration (for samples/s)
prepare = ["{python}", "-c", "..."]   # once per host before the workload's first cell
```

A cell of the `workloads` axis (`experiments.axes`) that names a table runs its command once per
rank (`experiments.workload.launch`); every check here runs when the matrix is read, before any
host is touched, and a refusal names the file and the field.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experiments.axes import AXES, TRAINER
from experiments.workload.template import (
    BATCH_SCOPE,
    HOST_SCOPE,
    PROCESS_SCOPE,
    fields,
    render,
)
from inventory.errors import ConfigError, config_error
from inventory.names import check_name
from trainer.steptimes import check_pattern

MAX_SHIP_FILE = 64 * 2**20
MAX_SHIP_TOTAL = 256 * 2**20
MAX_SHIP_FILES = 1000
OWNED_ENV = (
    "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "NODE_RANK", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE",
    "WANLAB_JOB",
)  # fmt: skip
"""Variables wanlab sets per rank: a workload's `env` may not set them."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VERSIONS = {"deepspeed": ["deepspeed", "torch"], "lightning": ["lightning", "torch"]}
"""The distributions whose versions a workload's cells record, by its timing (else torch's)."""
Template = Annotated[str, Field(min_length=1, max_length=4096)]


class Workload(BaseModel):
    """One `[workloads.NAME]` table."""

    model_config = ConfigDict(extra="forbid", strict=True)
    command: list[Template] = Field(min_length=1, max_length=1024)
    """The argv each rank runs; every element a template, never split, never given to a shell."""
    timing: Literal["deepspeed", "lightning", "jsonl", "regex"]
    """How step times are read from the timing rank's output (`trainer.steptimes`)."""
    iterations: int = Field(ge=1, le=1_000_000)
    """How many step timings the timing rank prints, warm-up included."""
    warmup: int = Field(1, ge=0)
    """Leading steps not timed."""
    pattern: str | None = Field(None, max_length=4096)
    """`timing = "regex"`: a pattern with one named group, `seconds` or `ms`."""
    timing_rank: int = Field(0, ge=0)
    """The rank whose output carries the step timings."""
    python: Template | None = None
    """The workload's interpreter on the hosts (default: the inventory's `python`)."""
    workdir: Template = "jobs/{workload}"
    """The job's working folder, relative to the host's inventory workdir."""
    ship: list[str] = Field([], max_length=MAX_SHIP_FILES)
    """Files beside the matrix copied into workdir on every host the workload uses."""
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field({}, max_length=256)
    """Added to each rank's environment (values are templates)."""
    threads: int | None = Field(None, ge=1, le=1024)
    """OMP_NUM_THREADS (default: the host's CPUs shared by the cell's ranks on that machine)."""
    batch: int | Template | None = None
    """Samples each rank trains on per iteration, or a template giving them (for samples/s)."""
    prepare: list[Template] | None = Field(None, min_length=1, max_length=1024)
    """Run once per host before the workload's first cell, untimed, in the jobs' environment."""
    prepare_s: float = Field(900.0, gt=0, le=24 * 3600)
    cell_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    """The cell's limit from the job's start to its last exit (default: [timeouts] cell_s)."""


@dataclass(frozen=True)
class WorkloadSpec:
    """A validated workload: its table and the bytes of the files it ships."""

    name: str
    table: Workload
    files: dict[str, bytes]
    """Ship path (relative to workdir) → content."""

    @property
    def versions(self) -> list[str]:
        """The distributions each host's versions are read for."""
        return VERSIONS.get(self.table.timing, ["torch"])

    def batch(self, values: dict[str, Any]) -> int | None:
        """Samples per rank per iteration in a cell with these variables (None: not given)."""
        batch = self.table.batch
        return int(render(batch, values)) if isinstance(batch, str) else batch


def _check_templates(table: Workload, where: str, file: str) -> None:
    checks: list[tuple[str, str, dict[str, str]]] = [
        (f"{where}.command[{i}]", t, PROCESS_SCOPE) for i, t in enumerate(table.command)
    ]
    checks += [(f"{where}.prepare[{i}]", t, HOST_SCOPE) for i, t in enumerate(table.prepare or [])]
    checks += [(f"{where}.env.{k}", v, PROCESS_SCOPE) for k, v in table.env.items()]
    checks.append((f"{where}.workdir", table.workdir, HOST_SCOPE))
    if table.python is not None:
        host_only = {k: v for k, v in HOST_SCOPE.items() if k != "python"}
        checks.append((f"{where}.python", table.python, host_only))
    if isinstance(table.batch, str):
        checks.append((f"{where}.batch", table.batch, BATCH_SCOPE))
    for field, template, scope in checks:
        try:
            fields(template, scope)
        except ValueError as error:
            raise ConfigError(file, field, str(error)) from None


def _read_ship(paths: list[str], base: Path, where: str, file: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for index, name in enumerate(paths):
        field = f"{where}.ship[{index}]"
        relative = PurePosixPath(name)
        if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
            raise ConfigError(file, field, f"{name!r}: a path relative to the matrix, without ..")
        path = base / relative
        try:
            info = os.stat(path, follow_symlinks=True)
        except OSError as error:
            raise ConfigError(file, field, f"{name!r}: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(file, field, f"{name!r} is not a regular file")
        if info.st_size > MAX_SHIP_FILE:
            raise ConfigError(file, field, f"{name!r} is over {MAX_SHIP_FILE // 2**20} MiB")
        total += info.st_size
        if total > MAX_SHIP_TOTAL:
            raise ConfigError(file, field, f"files over {MAX_SHIP_TOTAL // 2**20} MiB in all")
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        descriptor = os.open(path, flags)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ConfigError(file, field, f"{name!r} is not a regular file")
            with os.fdopen(descriptor, "rb", closefd=False) as handle:
                files[relative.as_posix()] = handle.read(MAX_SHIP_FILE + 1)
        finally:
            os.close(descriptor)
    return files


def _check_table(table: Workload, where: str, file: str) -> None:
    if table.warmup >= table.iterations:
        raise ConfigError(file, f"{where}.warmup", f"must be less than iterations "
                          f"({table.iterations}): no step would be timed")  # fmt: skip
    if (table.pattern is not None) != (table.timing == "regex"):
        field = f"{where}.pattern"
        raise ConfigError(file, field, 'is needed with timing = "regex", and only there')
    if table.pattern is not None:
        try:
            check_pattern(table.pattern)
        except ValueError as error:
            raise ConfigError(file, f"{where}.pattern", str(error)) from None
    for key in table.env:
        if not _ENV_NAME.fullmatch(key):
            raise ConfigError(file, f"{where}.env", f"{key!r} is not a variable name")
        if key in OWNED_ENV:
            raise ConfigError(file, f"{where}.env.{key}", "is set per rank by wanlab")
        if key == "OMP_NUM_THREADS":
            raise ConfigError(file, f"{where}.env.{key}", f"use {where}.threads")
    if isinstance(table.batch, int) and table.batch < 1:
        raise ConfigError(file, f"{where}.batch", "must be at least 1")
    _check_templates(table, where, file)


def load_workloads(tables: Any, base: Path, file: str) -> dict[str, WorkloadSpec]:
    """Every `[workloads.NAME]` table, validated, with the files it ships read (`base`: the
    matrix's folder)."""
    if not isinstance(tables, dict):
        raise ConfigError(file, "workloads", "must be a table of [workloads.NAME] tables")
    loaded: dict[str, WorkloadSpec] = {}
    for name, data in tables.items():
        where = f"workloads.{name}"
        try:
            check_name(name)
        except ValueError as error:
            raise ConfigError(file, where, str(error)) from None
        if name == TRAINER:
            raise ConfigError(file, where, "'trainer' is wanlab's own trainer; choose another name")
        if not isinstance(data, dict):
            raise ConfigError(file, where, "must be a table")
        try:
            table = Workload(**data)
        except ValidationError as error:
            raise config_error(error, file, prefix=where) from None
        _check_table(table, where, file)
        loaded[name] = WorkloadSpec(name, table, _read_ship(table.ship, base, where, file))
    return loaded


def check_axis(workloads: dict[str, WorkloadSpec], axes: Any, file: str) -> None:
    """The `workloads` axis names tables (or the trainer); an axis that varies must mean
    something to some cell."""
    listed = axes.workloads
    for index, name in enumerate(listed):
        if name != TRAINER and name not in workloads:
            known = ", ".join(workloads) or "none"
            raise ConfigError(file, f"axes.workloads[{index}]",
                              f"unknown workload {name!r} (tables: {known})")  # fmt: skip
    unused = sorted(set(workloads) - set(listed))
    if unused:
        raise ConfigError(file, f"workloads.{unused[0]}", "is not listed in axes.workloads")
    if TRAINER not in listed:
        for axis in AXES:
            values = getattr(axes, axis.key)
            if axis.trainer_only and values is not None and len(values) > 1:
                raise ConfigError(file, f"axes.{axis.key}", "varies only the built-in trainer, "
                                  "which axes.workloads does not list")  # fmt: skip
    if len(axes.micro_batches) > 1 and TRAINER not in listed:
        blind = [n for n in listed if "micro_batch" not in _names(workloads[n].table)]
        if blind:
            raise ConfigError(file, "axes.micro_batches", f"workload {blind[0]} never uses "
                              "{micro_batch}: its cells would repeat each other")  # fmt: skip


def _names(table: Workload) -> set[str]:
    """Every variable a workload's templates name."""
    templates = [*table.command, *table.env.values()]
    if isinstance(table.batch, str):
        templates.append(table.batch)
    return {name for t in templates for name in fields(t, PROCESS_SCOPE)}
