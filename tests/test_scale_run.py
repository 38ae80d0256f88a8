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

import pytest
from rich.console import Console

from experiments.matrix import load_matrix
from experiments.report.write import write_report
from experiments.results import ResultsStore
from experiments.runner import MatrixRunner
from inventory.loader import load_inventory
from inventory.localfleet import LocalFleet

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


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale-run")
    target = base / "target.toml"
    target.write_text(TARGET)
    scaled = base / "scaled.toml"
    derived = subprocess.run(
        [sys.executable, "-c", "from experiments.cli import main; main()", "scale", str(target),
         "--ceiling", "200mbit", "--lab-latency", "0.1ms", "--lab-receive-share", "0.72", "-o",
         str(scaled), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert derived.returncode == 0, derived.stderr
    derivation = json.loads(derived.stdout)
    fleet = LocalFleet(prefix="wls", subnet="198.18.14.0/24", home=base / "home")
    results = base / "results"
    try:
        fleet.up(2)
        runner = MatrixRunner(
            load_matrix(scaled), load_inventory(fleet.inventory_path), ResultsStore(results),
            Console(quiet=True),
        )  # fmt: skip
        outcome = runner.run()
    finally:
        fleet.down()
    assert not outcome.failed, outcome.failed
    return derivation, load_matrix(scaled), results, base


def test_every_cell_ran_emulated_at_the_targets_times(scaled_run):
    derivation, spec, results, _ = scaled_run
    records = ResultsStore(results).latest()
    assert len(records) == 2 and all(r.ok for r in records)
    emulate = spec.trainer["emulate"]
    assert emulate["scale"] == derivation["factor"]
    for record in records:
        assert record.trainer["emulate"] == emulate
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
