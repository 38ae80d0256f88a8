"""How long bad input takes to be refused: the inputs most likely to cost time (a few kilobytes
that make 10^14 cells, a DP degree of 10^7, a billion micro-batches, FIFOs where files should
be, a 5 MiB matrix, a 1 GiB results file, a results folder of another matrix), each run through
the `wanlab` entry point in this process (its imports already paid) and timed from the call to
its exit; goal: every one refused (exit code 2) within 1 s, the slowest of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_facts

from experiments.cli import main as wanlab

GOAL_S = 1.0
MATRIX = """
[matrix]
name = "t"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 3
[axes]
profiles = ["default", "200mbit"]
dp_degrees = [1, 2]
"""


def listed(n: int, form: str) -> str:
    return "[" + ", ".join(form.format(i + 1) for i in range(n)) + "]"


AXES = {"profiles": '"{}ms"', "dp_degrees": "{}", "micro_batches": "{}", "engines": '"e{}"',
        "dp_modes": '"m{}"', "tcp": '"t{}"'}  # fmt: skip
HUGE_AXES = (
    MATRIX.split("[axes]")[0].replace('"t"', '"t"\nrepeats = 100')
    + "[axes]\n"
    + "".join(f"{axis} = {listed(100, form)}\n" for axis, form in AXES.items())
)
"""Axes of 10^14 cells (repeats included) in a few kilobytes."""


def cell(profile: str, dp: int, batch: int = 4) -> dict:
    """A finished cell of MATRIX as the runner records it."""
    trainer = {"model": "tiny", "batch": batch, "pipeline": 2, "iterations": 3, "dp_degree": dp}
    return {"cell_id": f"{profile}|dp{dp}|mb1|gpipe|ps|r0", "status": "ok", "matrix": "t",
            "params": {"profile": profile, "dp_degree": dp, "micro_batch": 1,
                       "engine": "gpipe", "dp_mode": "ps"},
            "trainer": trainer, "summary": {"phases": {"total_s": {"mean": 0.5}}}}  # fmt: skip


def inputs(folder: Path) -> list[tuple[str, list[str], dict]]:
    """(case, command line, environment) of every refusal timed, its files made in `folder`."""
    (folder / "m.toml").write_text(MATRIX)
    (folder / "huge-axes.toml").write_text(HUGE_AXES)
    (folder / "max-cells.toml").write_text(
        HUGE_AXES.replace('"t"', '"t"\nmax_cells = 1000000000000000')
    )
    (folder / "dp.toml").write_text(MATRIX.replace("[1, 2]", "[10000000]"))
    (folder / "batch.toml").write_text(MATRIX.replace("batch = 4", "batch = 1000000000"))
    (folder / "big.toml").write_text(MATRIX + "#" * (5 * 2**20) + "\n")
    os.mkfifo(folder / "fifo.toml")
    (folder / "kernel").mkdir()
    os.mkfifo(folder / "kernel" / "kernel.json")
    results = folder / "results"
    results.mkdir()
    (results / "matrix.toml").write_text(MATRIX.replace("batch = 4", "batch = 8"))
    (results / "cells.jsonl").write_text(json.dumps(cell("default", 1)) + "\n")
    huge = folder / "huge-results"
    huge.mkdir()
    (huge / "matrix.toml").write_text(MATRIX)
    with open(huge / "cells.jsonl", "wb") as cells:
        cells.truncate(2**30 + 1)  # sparse: no disk taken
    kernel = {"WANLAB_KERNEL_DIR": str(folder / "kernel")}
    return [
        ("10^14 cells, max_cells 10^15", ["predict", "max-cells.toml"], {}),
        ("10^14 cells", ["run", "huge-axes.toml", "-o", "out", "-i", "x"], {}),
        ("DP degree 10^7", ["predict", "dp.toml"], {}),
        ("10^9 micro-batches", ["predict", "batch.toml"], {}),
        ("5 MiB matrix", ["predict", "big.toml"], {}),
        ("matrix a FIFO", ["predict", "fifo.toml"], {}),
        ("kernel.json a FIFO", ["fleet", "status"], kernel),
        ("1 GiB cells.jsonl", ["report", str(huge)], {}),
        ("results of another matrix", ["scale", str(results), "--to", "x"], {}),
        ("scale --ceiling 0bit", ["scale", "m.toml", "--ceiling", "0bit"], {}),
        ("AWS_MAX_ATTEMPTS=lots", ["inventory", "show", "--from", "ec2", "--region", "eu-west-1"],
         {"AWS_MAX_ATTEMPTS": "lots"}),
    ]  # fmt: skip


def refusal_seconds(argv: list[str], environment: dict) -> float:
    """Seconds from calling the entry point to its exit; it must exit with code 2."""
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    sys.argv = ["wanlab", *argv]
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            wanlab()
    except SystemExit as done:
        seconds = time.perf_counter() - start
        if done.code != 2:
            raise RuntimeError(f"{argv} exited with {done.code}, not 2") from None
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        for case, argv, environment in inputs(Path(folder)):
            times = [refusal_seconds(argv, environment) for _ in range(args.repeats)]
            rows.append({"case": case, "max_s": round(max(times), 4)})
            print(f"{case:32} {max(times) * 1000:8.1f} ms (slowest of {args.repeats})")
    slowest = max(rows, key=lambda row: row["max_s"])
    print(f"slowest refusal: {slowest['case']}, {slowest['max_s']:.3f} s (goal <= {GOAL_S} s)")
    if args.json:
        print(json.dumps({"bench": "refusals", "goal": f"every refusal <= {GOAL_S} s",
                          "met": slowest["max_s"] <= GOAL_S, "slowest": slowest, "rows": rows,
                          "machine": machine_facts()}))  # fmt: skip


if __name__ == "__main__":
    main()
