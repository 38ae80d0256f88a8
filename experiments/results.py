"""The results store: one folder per matrix run, appended cell by cell, never rewritten.

`cells.jsonl` is the record of truth (one JSON object per finished cell, flushed and synced as
soon as the cell ends); `cells.parquet` is rebuilt from it after every cell for pandas users;
`matrix.toml` is a copy of the spec and `run.json` the environment of each run into the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from inventory.errors import ConfigError

CELLS = "cells.jsonl"


class ResultsStore:
    """Append-only cell records in a results folder."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.cells_path = self.directory / CELLS

    def open_for_run(self, matrix_path: Path, resume: bool) -> None:
        """Create the folder, or continue it with `resume`; refuse to mix runs silently."""
        if self.cells_path.exists() and not resume:
            raise ConfigError(
                str(self.directory),
                None,
                "already holds results; pass --resume to continue it or choose another -o folder",
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        copy = self.directory / "matrix.toml"
        if not copy.exists():
            shutil.copyfile(matrix_path, copy)

    def records(self) -> list[dict]:
        """Every cell record, in the order written (a torn line, as a crash can leave last, is
        skipped); ConfigError for a line that is JSON but not a cell record."""
        if not self.cells_path.exists():
            return []
        records = []
        for number, line in enumerate(self.cells_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "cell_id" not in record:
                where = f"line {number}"
                raise ConfigError(str(self.cells_path), where, "is not a cell record (no cell_id)")
            records.append(record)
        return records

    def latest(self) -> list[dict]:
        """The last record of each cell (a re-run supersedes a failed try), in first-seen order;
        ConfigError when the folder holds no cells file."""
        if not self.cells_path.is_file():
            raise ConfigError(str(self.directory), CELLS, "not found: not a results folder")
        latest: dict[str, dict] = {}
        for record in self.records():
            latest[record["cell_id"]] = record
        return list(latest.values())

    def done_ids(self) -> set[str]:
        """Cells that already finished successfully."""
        return {r["cell_id"] for r in self.records() if r.get("status") == "ok"}

    def append(self, record: dict) -> None:
        """Add one cell record durably, then refresh the Parquet copy."""
        with self.cells_path.open("a") as cells:
            cells.write(json.dumps(record, default=str) + "\n")
            cells.flush()
            os.fsync(cells.fileno())
        self.write_parquet()

    def write_parquet(self) -> Path:
        """Rebuild `cells.parquet` (flattened columns) from the JSON lines."""
        path = self.directory / "cells.parquet"
        frame = pd.json_normalize(self.records(), max_level=2)
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
                frame[column] = frame[column].map(json.dumps)
        frame.to_parquet(path, index=False)
        return path

    def write_run_info(self, info: dict) -> None:
        """Append this run's environment (hosts, versions, time) to `run.json`."""
        path = self.directory / "run.json"
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append(info)
        path.write_text(json.dumps(runs, indent=2, default=str) + "\n")
