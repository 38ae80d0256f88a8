"""A scale model end to end: `wanlab scale` writes it, the runner runs it on a real local fleet
(real sshd, real shaping, real gloo ranks holding for the target's compute times), and the report
sets its measured slowdown beside the target's predicted one, from the records themselves.

The target is rate-only (this kernel has no sch_netem; delays need the delay node, whose own
tests cover them), two stages of GPT-3 XL at the reference experiment's compute times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from experiments.lab.fleet import LocalFleet
from experiments.matrix import load_matrix
from experiments.report.write import write_report
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner
from inventory.loader import load_inventory

TARGET = """\
[matrix]
name = "two-stage"
inventory = "local"
[trainer]
model = "gpt3-xl"
batch = 4
pipeline = 2
recompute = true
iterations = 3
warmup = 1
[axes]
profiles = ["default", "1gbit"]
dp_degrees = [1]
"""


REAL_TARGET = """\
[matrix]
name = "real-target"
inventory = "local"
[trainer]
model = "cpu-small"
batch = 4
pipeline = 2
iterations = 4
warmup = 1
[axes]
profiles = ["default", "20mbit"]
dp_degrees = [1]
"""
"""A target that ran for real (on the same local fleet, standing in for a real one): its
results folder is what `wanlab scale` models, beside its measured times."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = LocalFleet(prefix="wls", subnet="198.18.14.0/24", home=tmp_path_factory.mktemp("h"))
    try:
        fleet.up(2)
        yield fleet
    finally:
        fleet.down()


def scale_and_run(target: Path, fleet, base: Path, *lab: str) -> tuple[dict, Path, Path]:
    """`wanlab scale TARGET --to FLEET` (the lab's figures given), then a run of what it wrote."""
    scaled = base / "scaled.toml"
    derived = subprocess.run(
        [sys.executable, "-c", "from experiments.cli import main; main()", "scale", str(target),
         "--to", str(fleet.inventory_path), *lab, "-o", str(scaled), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert derived.returncode == 0, derived.stderr
    results = run_matrix(scaled, fleet, base / "results")
    return json.loads(derived.stdout), scaled, results


def run_matrix(matrix: Path, fleet, results: Path) -> Path:
    runner = MatrixRunner(
        load_matrix(matrix), load_inventory(fleet.inventory_path), ResultsStore(results),
        Console(quiet=True),
    )  # fmt: skip
    outcome = runner.run()
    assert not outcome.failed, outcome.failed
    return results


LAB = ("--ceiling", "200mbit", "--lab-latency", "0.1ms", "--lab-receive-share", "0.72")


@pytest.fixture(scope="module")
def scaled_run(fleet, tmp_path_factory):
    base = tmp_path_factory.mktemp("scale-run")
    target = base / "target.toml"
    target.write_text(TARGET)
    derivation, scaled, results = scale_and_run(target, fleet, base, *LAB)
    return derivation, load_matrix(scaled), results, base


@pytest.fixture(scope="module")
def measured_target_run(fleet, tmp_path_factory):
    base = tmp_path_factory.mktemp("measured-target")
    matrix = base / "target.toml"
    matrix.write_text(REAL_TARGET)
    target = run_matrix(matrix, fleet, base / "target")
    # a ceiling above what every rank sends at once: s = 1, the lab runs the target's own sizes
    lab = ("--ceiling", "100gbit", *LAB[2:])
    derivation, scaled, results = scale_and_run(target, fleet, base, *lab)
    return target, derivation, load_matrix(scaled), results, base


def test_every_cell_ran_emulated_at_the_targets_times(scaled_run):
    derivation, spec, results, _ = scaled_run
    records = ResultsStore(results).latest()
    assert len(records) == 2 and all(r.ok for r in records)
    target_of = {cell.profile: cell.target_profile for cell in spec.scale.cells}
    for record in records:
        profile = record.params.profile
        emulate = spec.trainer_table(profile)["emulate"]
        assert record.trainer["emulate"] == emulate
        assert emulate["scale"] == derivation["factors"][target_of[profile]]
        # every host read back its profile's own TCP windows (the kernel's view, not the file's)
        [cell] = [c for c in spec.cells() if c.cell_id == record.cell_id]
        windows = spec.tcp_settings(cell).model_dump(mode="json", exclude_none=True)
        assert all(tcp == windows for tcp in record.network.tcp.values())
        for stage in record.summary.stages:
            forward = emulate["forward_ms"][stage["stage"]] / 1000
            assert forward <= stage["forward_per_micro_s"] <= 1.25 * forward


def test_the_report_sets_the_measured_slowdown_beside_the_targets(scaled_run, tmp_path):
    _, spec, results, _ = scaled_run
    written = write_report(results, tmp_path, {"md"})
    text = written["md"].read_text()
    assert "emulated (tensors ×" in text
    section = text.split("## Scale model against its target")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 1gbit")]
    assert len(rows) == 1, section
    cells = {r.params.profile: r for r in ResultsStore(results).latest()}
    lab = {spec.scale.cells[i].target_profile: c for i, c in enumerate(spec.scale.cells)}
    measured = (
        cells[lab["1gbit"].profile].summary.iteration_s
        / cells[lab["default"].profile].summary.iteration_s
    )
    predicted = lab["1gbit"].predicted_s / lab["default"].predicted_s
    assert f"×{measured:.2f}" in rows[0] and f"×{predicted:.2f}" in rows[0]
    assert f"{measured / predicted - 1:+.1%}" in rows[0]


def test_a_measured_target_is_scaled_on_its_own_cells_and_shown_beside_them(
    measured_target_run, tmp_path
):
    target, derivation, spec, results, _ = measured_target_run
    measured = {r.params.profile: r for r in ResultsStore(target).latest()}
    assert set(derivation["factors"].values()) == {1.0}
    # each target cell carries what it measured; its compute is its baseline cell's stages
    by_target = {cell.target_profile: cell for cell in spec.scale.cells}
    for name, record in measured.items():
        assert by_target[name].measured_s == record.summary.iteration_s
    forward_ms = spec.trainer["emulate"]["forward_ms"]
    for stage in measured["default"].summary.stages:
        assert forward_ms[stage["stage"]] == pytest.approx(
            stage["forward_per_micro_s"] * 1000, rel=1e-3
        )
    text = write_report(results, tmp_path, {"md"})["md"].read_text()
    section = text.split("## Scale model against its target")[1].split("## ")[0]
    [row] = [line for line in section.splitlines() if line.startswith("| 20mbit")]
    slowdown = measured["20mbit"].summary.iteration_s / measured["default"].summary.iteration_s
    assert "slowdown (target, measured)" in section and f"×{slowdown:.2f}" in row
