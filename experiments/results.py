"""The cell record and the results store: one folder per matrix run, appended cell by cell.

`CellRecord` is what one finished cell leaves: the runner fills it (experiments/runner.py), and
the reports, the cost model's calibration and `--resume` read it back through
`ResultsStore.records()`/`latest()`, the one reader. `cells.jsonl` is the record of truth (one
record per line, flushed and synced as soon as the cell ends, never rewritten);
`cells.parquet` is rebuilt from it after every cell for pandas users; `matrix.toml` is a copy
of the spec and `run.json` the environment of each run into the folder. Files written before a
field was renamed are read with the new name (`dp` and `data` are now `dp_degree`, a pair
matrix's setting kind `matrix` is now `pairs`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experiments.axes import record_params_model
from inventory.errors import ConfigError, check_path, config_error
from inventory.safewrite import check_target, open_append, write_file
from inventory.tomlfile import read_text
from trainer.config import TrainerConfig

CELLS = "cells.jsonl"
PARQUET = "cells.parquet"
RUN_INFO = "run.json"
MATRIX_COPY = "matrix.toml"
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A measured time: a finite number of seconds (a record holding NaN is not one of ours)."""
MAX_CELLS_BYTES = 1024 * 2**20
"""The largest cells.jsonl read (1 GiB: 100,000 cells of 10 KiB each)."""


CellParams = record_params_model()
"""A cell's coordinates in its matrix (`experiments.axes`): a record from before an axis holds
its neutral value (`tcp` = `host`, an optional axis None), and `dp` reads as `dp_degree`."""


class Summary(BaseModel):
    """Rank 0's summary of the timed iterations (written by `trainer.train.build_summary`);
    fields this model does not name are kept as they are."""

    model_config = ConfigDict(extra="allow")

    phases: dict[str, dict[str, Seconds]]
    """Per phase (`total_s`, `forward_s`, …): mean, std, median, p10, p90 over iterations."""
    timed_iterations: int = 1
    warmup_iterations_s: list[float] = []
    phases_measured: list[str] = ["forward_s"]
    stages: list[dict[str, Any]] = []
    world_size: int | None = None
    tokens_per_iteration: int | None = None

    @model_validator(mode="after")
    def _timed(self) -> Summary:
        if not self.phases.get("total_s", {}).get("mean"):
            raise ValueError("phases.total_s.mean (the mean iteration time) is missing or 0")
        return self

    @property
    def iteration_s(self) -> float:
        """Mean seconds per timed iteration."""
        return self.phases["total_s"]["mean"]


class CellNetwork(BaseModel):
    """The cell's network: as set, as the kernels read it back, and as probed."""

    setting: dict[str, Any] = {}
    """`experiments.runner.describe_target`: kind `profile` (its fields) or `pairs`."""
    applied: dict[str, dict[str, Any] | None] | None = None
    tcp_setting: dict[str, Any] | None = None
    """The TCP settings the cell set (`netem.tcp.TcpSettings`); None: the hosts' own."""
    tcp: dict[str, dict[str, Any] | None] = {}
    """Per host, its TCP settings as read back once the cell's were applied."""
    mtu: dict[str, int | None] = {}
    """Per host, its interface's MTU, read beside its TCP settings."""
    probe: list[dict[str, Any]] = []
    probe_from_earlier_cell: bool = False

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        setting = values.get("setting") if isinstance(values, dict) else None
        if isinstance(setting, dict) and setting.get("kind") == "matrix":
            values = {**values, "setting": {**setting, "kind": "pairs"}}
        return values


class CellTiming(BaseModel):
    """Where the cell's wall time went, in seconds; None where the cell never got there."""

    connect_s: float | None = None
    apply_s: float | None = None
    probe_s: float | None = None
    train_s: float | None = None
    reset_s: float | None = None
    cell_s: float | None = None
    training_s: float | None = None
    """Rank 0's iterations, warm-up included."""
    overhead_s: float | None = None
    """The rest of the cell: shaping, probing, process-group set-up, collecting, reset."""
    overhead_share: float | None = None


class RecordedEmulation(BaseModel):
    """What a record's emulated compute must hold for reports to read it."""

    model_config = ConfigDict(extra="allow")
    scale: float = Field(gt=0, le=1, allow_inf_nan=False, strict=True)


class RecordedTrainer(BaseModel):
    """The trainer fields of a record that reports read without building the configuration:
    numbers where they are given (a record may come from an older wanlab: others may be
    missing, and more may be there)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    batch: int | None = Field(None, ge=1, strict=True)
    micro_batch: int | None = Field(None, ge=1, strict=True)
    pipeline: int | None = Field(None, ge=1, strict=True)
    dp_degree: int | None = Field(None, ge=1, strict=True)
    tensor: int | None = Field(None, ge=1, strict=True)
    emulate: RecordedEmulation | None = None


class CellRecord(BaseModel):
    """One finished cell (a failed one too, with its reason)."""

    model_config = ConfigDict(extra="allow")

    cell_id: str
    status: Literal["ok", "failed"] = "failed"
    reason: str | None = None
    matrix: str | None = None
    params: CellParams
    trainer: dict[str, Any]
    """The cell's TrainerConfig fields (`config()` builds it)."""
    network: CellNetwork = Field(default_factory=CellNetwork)
    summary: Summary | None = None
    hosts: dict[str, Any] = {}
    placement: dict[int, str] | None = None
    """Rank → host name (rank = replica · pipeline + stage)."""
    placement_rule: str | None = None
    """How the matrix placed the ranks (`experiments.placement.Placement.describe`)."""
    timing: CellTiming = Field(default_factory=CellTiming)
    workload: dict[str, Any] | None = None
    """A workload's cell (`experiments.workload`): its command, each rank's exit, the versions
    read on its hosts (None: the built-in trainer's cell, whose configuration is `trainer`)."""
    started_at: str | None = None
    finished_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        trainer = values.get("trainer") if isinstance(values, dict) else None
        if isinstance(trainer, dict) and "data" in trainer:
            trainer = {**trainer, "dp_degree": trainer["data"]}
            del trainer["data"]
            values = {**values, "trainer": trainer}
        return values

    @property
    def ok(self) -> bool:
        """Finished with rank 0's summary."""
        return self.status == "ok" and self.summary is not None

    def config(self) -> TrainerConfig:
        """The cell's trainer configuration."""
        return TrainerConfig(**self.trainer)

    def finish_timing(self) -> None:
        """Split the cell's time into training (rank 0's iterations, warm-up included) and
        overhead (the rest)."""
        timing = self.timing
        if self.summary is None or timing.cell_s is None:
            return
        summary = self.summary
        timed = summary.iteration_s * summary.timed_iterations
        timing.training_s = timed + sum(summary.warmup_iterations_s)
        timing.overhead_s = max(0.0, timing.cell_s - timing.training_s)
        timing.overhead_share = timing.overhead_s / timing.cell_s


class ResultsStore:
    """Append-only cell records in a results folder."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.cells_path = self.directory / CELLS
        self.torn_lines: list[int] = []  # lines of the last records() that were not JSON

    def check_for_run(self, resume: bool) -> None:
        """Refuse a folder a run cannot write into, without touching it: a file, a folder
        holding another run's results (unless `resume`), anything but a regular file where
        the run writes one, or torn records."""
        check_path(self.directory, "-o")
        if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
            raise ConfigError(str(self.directory), "-o", "exists and is not a folder")
        if self.directory.is_dir():  # what a run writes there must be a file or nothing
            for name in (CELLS, PARQUET, RUN_INFO, MATRIX_COPY):
                check_target(self.directory / name, "-o")
        if os.path.lexists(self.cells_path) and not resume:
            raise ConfigError(
                str(self.directory),
                None,
                "already holds results; pass --resume to continue it or choose another -o folder",
            )
        if resume:
            self.records()  # a record that is not one is named now, not after the first cell

    def open_for_run(self, matrix_path: Path, resume: bool) -> None:
        """Create the folder, or continue it with `resume`; refuse to mix runs silently."""
        self.check_for_run(resume)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(str(self.directory), "-o", f"cannot be made: {error}") from None
        copy = self.directory / MATRIX_COPY
        if not copy.exists():
            write_file(copy, matrix_path.read_bytes(), "-o")

    def records(self) -> list[CellRecord]:
        """Every cell record, in the order written (a torn line, as a crash can leave last, is
        skipped, and its number kept in `torn_lines`); ConfigError for a line that is JSON but
        not a cell record."""
        self.torn_lines = []
        if not os.path.lexists(self.cells_path):
            return []
        records = []
        text = read_text(self.cells_path, MAX_CELLS_BYTES)
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.torn_lines.append(number)
                continue
            try:
                records.append(CellRecord.model_validate(record))
                RecordedTrainer.model_validate(records[-1].trainer)
            except ValidationError as error:
                within = "trainer" if error.title == RecordedTrainer.__name__ else ""
                problem = config_error(error, str(self.cells_path), prefix=within)
                where = ": ".join(filter(None, (f"line {number}", problem.field)))
                raise ConfigError(problem.file, where, problem.message) from None
        return records

    def latest(self) -> list[CellRecord]:
        """The last record of each cell (a re-run supersedes a failed try), in first-seen order;
        ConfigError when the folder holds no cells file."""
        if not os.path.isfile(self.cells_path):
            raise ConfigError(str(self.directory), CELLS, "not found: not a results folder")
        latest: dict[str, CellRecord] = {}
        for record in self.records():
            latest[record.cell_id] = record
        return list(latest.values())

    def done_ids(self) -> set[str]:
        """Cells that already finished successfully."""
        return {record.cell_id for record in self.records() if record.status == "ok"}

    def append(self, record: CellRecord) -> None:
        """Add one cell record durably, then refresh the Parquet copy."""
        with open_append(self.cells_path, "-o") as cells:
            cells.seek(0, os.SEEK_END)
            if cells.tell() > 0:
                cells.seek(cells.tell() - 1)
                if cells.read(1) != "\n":  # a torn last line: start a line of our own
                    cells.write("\n")
            cells.write(record.model_dump_json() + "\n")
            cells.flush()
            os.fsync(cells.fileno())
        self.write_parquet()

    def write_parquet(self) -> Path:
        """Rebuild `cells.parquet` (flattened columns) from the JSON lines."""
        rows = [record.model_dump(mode="json") for record in self.records()]
        frame = pd.json_normalize(rows, max_level=2)
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
                frame[column] = frame[column].map(json.dumps)
        return write_file(self.directory / PARQUET, frame.to_parquet(index=False), "-o")

    def write_run_info(self, info: dict) -> None:
        """Append this run's environment (hosts, versions, time) to `run.json`."""
        path = check_target(self.directory / RUN_INFO, "-o")  # never read through a link
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append(info)
        write_file(path, json.dumps(runs, indent=2, default=str) + "\n", "-o")
