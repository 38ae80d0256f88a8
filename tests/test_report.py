"""Reports built from the results of a real small matrix run on a local fleet.

One run for the whole module (4 namespaced hosts, real sshd, real torch.distributed ranks, a
rate-only profile: this kernel has no sch_netem, delay needs the delay node). Every number the
report shows is checked against the raw JSON lines, computed here independently.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from experiments.cli.report import report
from experiments.lab.fleet import LocalFleet
from experiments.matrix import load_matrix
from experiments.report.data import cells_frame, points_frame
from experiments.report.tables import fmt_mean_spread, fmt_ratio, iteration_table
from experiments.report.write import FORMATS, parse_formats, write_comparison, write_report
from experiments.results import CellRecord, ResultsStore
from experiments.runner import MatrixRunner
from inventory.errors import ConfigError
from inventory.loader import load_inventory

ROOT = Path(__file__).resolve().parent.parent
MATRIX = """\
[matrix]
name = "report-test"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 3
warmup = 1
threads = 1
timeout_s = 30
[axes]
profiles = ["default", "200mbit"]
dp_degrees = [1, 2]
[probe]
seconds = 0.3
count = 10
[timeouts]
cell_s = 120
"""
FAILED_CELL = "100mbit|dp1|mb1|gpipe|ps|r0"
MISSING_CELL = "100mbit|dp2|mb1|gpipe|ps|r0"


@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> Path:
    """A results folder written by a real run of a 2×2 matrix on a 4-host local fleet."""
    base = tmp_path_factory.mktemp("report-run")
    fleet = LocalFleet(prefix="wlr", subnet="198.18.12.0/24", home=base / "home")
    try:
        fleet.up(4)
        matrix = base / "matrix.toml"
        matrix.write_text(MATRIX)
        results = base / "results"
        runner = MatrixRunner(
            load_matrix(matrix),
            load_inventory(fleet.inventory_path),
            ResultsStore(results),
            Console(quiet=True),
        )
        outcome = runner.run()
    finally:
        fleet.down()
    assert not outcome.failed, f"the real run failed: {outcome.failed}"
    return results


def raw_records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "cells.jsonl").read_text().splitlines()]


def typed(*records: dict) -> list[CellRecord]:
    """Records edited as raw JSON, as the results store would read them."""
    return [CellRecord.model_validate(record) for record in records]


@pytest.fixture(scope="module")
def with_problems(real_results, tmp_path_factory) -> Path:
    """The real results plus: a failed first try of a cell that later succeeded (the last
    record wins), a failed cell, and a cell the spec lists that has no record."""
    folder = tmp_path_factory.mktemp("with-problems") / "results"
    shutil.copytree(real_results, folder)
    records = raw_records(real_results)
    retried = dict(records[0], status="failed", reason="first try: rank 1 timed out", summary=None)
    failed = {
        **records[0],
        "cell_id": FAILED_CELL,
        "status": "failed",
        "reason": "launch: rank 1 exited with 1",
        "summary": None,
        "params": {**records[0]["params"], "profile": "100mbit"},
        "network": {
            "setting": {"kind": "profile", "short": "100mbit", "delay_ms": 0.0, "rate_bps": 10**8}
        },
    }
    lines = [retried, *records, failed]
    (folder / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    spec = (folder / "matrix.toml").read_text()
    (folder / "matrix.toml").write_text(spec.replace('"200mbit"]', '"200mbit", "100mbit"]'))
    return folder


@pytest.fixture(scope="module")
def full_report(with_problems, tmp_path_factory) -> dict[str, Path]:
    return write_report(with_problems, tmp_path_factory.mktemp("report"), set(FORMATS))


def expected_numbers(records: list[dict]) -> dict[tuple, dict]:
    """Mean, slowdown, throughput and efficiency per (profile, dp), from the raw records."""
    ok = {
        (r["params"]["profile"], r["params"]["dp_degree"]): r
        for r in records
        if r["status"] == "ok"
    }
    out = {}
    for (profile, dp), r in ok.items():
        mean = r["summary"]["phases"]["total_s"]["mean"]
        hosts = len(set(r["placement"].values()))
        samples = r["trainer"]["batch"] * r["trainer"]["dp_degree"] / mean
        out[(profile, dp)] = {
            "mean": mean,
            "std": r["summary"]["phases"]["total_s"]["std"],
            "samples_s": samples,
            "tokens_s": r["summary"]["tokens_per_iteration"] / mean,
            "per_host": samples / hosts,
        }
    for (_, dp), numbers in out.items():
        numbers["slowdown"] = numbers["mean"] / out[("default", dp)]["mean"]
        numbers["efficiency"] = numbers["per_host"] / out[("default", 1)]["per_host"]
    return out


def test_numbers_match_the_raw_json_lines(real_results, full_report):
    expected = expected_numbers(raw_records(real_results))
    assert set(expected) == {(p, d) for p in ("default", "200mbit") for d in (1, 2)}
    points = pd.read_csv(full_report["csv:report_points"])
    for (profile, dp), numbers in expected.items():
        row = points[(points["profile"] == profile) & (points["dp_degree"] == dp)].iloc[0]
        assert row["status"] == "ok"
        assert row["iter_mean_s"] == pytest.approx(numbers["mean"], rel=1e-12)
        assert row["iter_std_s"] == pytest.approx(numbers["std"], rel=1e-9)
        assert row["slowdown"] == pytest.approx(numbers["slowdown"], rel=1e-12)
        assert row["samples_s"] == pytest.approx(numbers["samples_s"], rel=1e-12)
        assert row["tokens_s"] == pytest.approx(numbers["tokens_s"], rel=1e-12)
        assert row["efficiency"] == pytest.approx(numbers["efficiency"], rel=1e-12)
    from_parquet = pd.read_parquet(full_report["parquet:report_points"])
    assert from_parquet["iter_mean_s"].tolist() == pytest.approx(
        points["iter_mean_s"].tolist(), nan_ok=True
    )


def test_markdown_table_shows_each_cell_with_its_slowdown(real_results, full_report):
    expected = expected_numbers(raw_records(real_results))
    markdown = full_report["md"].read_text()
    table = markdown.split("## Iteration time per network setting")[1].split("##")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.count("|") > 5}
    header = [c.strip() for c in rows["network"].split("|")[1:-1]]
    assert header[:5] == [
        "network",
        "one-way delay",
        "rate",
        "RTT (measured)",
        "throughput (measured)",
    ]
    for (profile, dp), numbers in expected.items():
        cells = [c.strip() for c in rows[profile].split("|")[1:-1]]
        text = fmt_mean_spread(numbers["mean"], numbers["std"])
        assert cells[header.index(f"DP {dp}")] == f"{text} ({fmt_ratio(numbers['slowdown'])})"
    assert "200 Mbit/s" in rows["200mbit"] and "unlimited" in rows["default"]


def test_phase_breakdown_adds_up(real_results, full_report):
    points = pd.read_csv(full_report["csv:report_points"])
    for record in raw_records(real_results):
        phases = {k: v["mean"] for k, v in record["summary"]["phases"].items()}
        params = record["params"]
        row = points[
            (points["profile"] == params["profile"]) & (points["dp_degree"] == params["dp_degree"])
        ]
        row = row.iloc[0]
        compute = phases["forward_s"] + phases["backward_s"]
        rest = phases["comm_wait_s"] + phases["ps_sync_s"] + phases["optimizer_s"]
        assert row["compute_s"] == pytest.approx(compute, rel=1e-12)
        assert row["idle_s"] == pytest.approx(max(0.0, phases["total_s"] - compute - rest))


def test_failed_and_missing_cells_are_shown_not_dropped(with_problems, full_report):
    cells = pd.read_csv(full_report["csv:report_cells"]).set_index("cell_id")
    assert cells.loc[FAILED_CELL, "status"] == "failed"
    assert cells.loc[FAILED_CELL, "reason"] == "launch: rank 1 exited with 1"
    assert cells.loc[MISSING_CELL, "status"] == "missing"
    first = raw_records(with_problems)[0]["cell_id"]
    assert cells.loc[first, "status"] == "ok", "the last record of a cell must win"
    assert len(cells) == 6
    markdown = full_report["md"].read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| 100mbit |"))
    assert row == "| 100mbit | 0 ms | 100 Mbit/s | — | — | failed | missing |"
    problems = markdown.split("## Failed and missing cells")[1].split("##")[0]
    assert FAILED_CELL.replace("|", "\\|") in problems, "cell ids are escaped in Markdown"
    assert "rank 1 exited with 1" in problems
    assert MISSING_CELL.replace("|", "\\|") in problems
    page = full_report["html"].read_text()
    assert '<td class="failed">failed</td>' in page
    assert '<td class="missing">missing</td>' in page


def test_every_format_is_written_and_the_page_is_self_contained(full_report):
    kinds = set(full_report)
    assert {"md", "html", "csv:report_cells", "parquet:report_points"} <= kinds
    pngs = {k for k in kinds if k.startswith("png:")}
    stems = {"iteration_vs_rtt", "throughput_vs_rtt", "slowdown_vs_bdp", "phases"}
    assert pngs == {f"png:{s}" for s in stems}
    for kind in pngs:
        assert full_report[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = full_report["html"].read_text()
    assert page.count('src="data:image/png;base64,') == len(stems)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert html.escape('name = "report-test"') in page, "the matrix spec belongs in the page"
    assert "torch" in page and "kernel" in page, "the environment belongs in the page"
    assert "Predicted vs measured" not in page, "no predictions in these results"
    markdown = full_report["md"].read_text()
    assert all(f"]({s}.png)" in markdown for s in stems)


def test_predictions_are_set_beside_the_measurement(real_results, tmp_path):
    """The cost model's predictions.jsonl, beside the cells it predicts."""
    folder = tmp_path / "results"
    shutil.copytree(real_results, folder)
    rows = []
    for record in raw_records(real_results):
        predicted = record["summary"]["phases"]["total_s"]["mean"] * 1.25
        rows.append({"cell_id": record["cell_id"], "predicted_iteration_s": predicted})
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = write_report(folder, tmp_path / "out", {"md", "csv"})
    points = pd.read_csv(written["csv:report_points"])
    assert points["prediction_error"].tolist() == pytest.approx([0.25] * 4)
    section = written["md"].read_text().split("## Predicted vs measured")[1].split("##")[0]
    assert section.count("+25.0%") == 4


def test_pair_matrix_setting_shows_mean_delay_and_slowest_rate(real_results):
    record = next(r for r in raw_records(real_results) if r["params"]["profile"] == "200mbit")
    links = [
        {"src": "h0", "dst": "h1", "shape": {"delay_ms": 10.0, "rate_bps": 2 * 10**9}},
        {"src": "h1", "dst": "h0", "shape": {"delay_ms": 30.0, "rate_bps": 10**9}},
    ]
    record["network"]["setting"] = {"kind": "matrix", "short": "geo.toml", "links": links}
    table = iteration_table(points_frame(cells_frame(typed(record), {}, {})))
    assert table.loc[0, "one-way delay"] == "20 ms (mean of pairs)"
    assert table.loc[0, "rate"] == "1.00 Gbit/s"


def test_probe_throughput_from_too_short_a_window_is_left_out(real_results):
    """A bulk window of a few round trips measures TCP's slow start, not the path's rate."""
    record = next(r for r in raw_records(real_results) if r["params"]["profile"] == "200mbit")
    [probe] = record["network"]["probe"]
    assert probe["throughput_window_rtts"] >= 10  # the real run's window was long enough
    points = points_frame(cells_frame(typed(record), {}, {}))
    assert iteration_table(points).loc[0, "throughput (measured)"] != "—"
    assert points.loc[0, "bdp_bytes"] == pytest.approx(
        probe["throughput_bps"] * probe["rtt_ms_median"] / 1000 / 8
    )
    probe["throughput_window_rtts"] = 3.0
    points = points_frame(cells_frame(typed(record), {}, {}))
    assert iteration_table(points).loc[0, "throughput (measured)"] == "—"
    rate = record["network"]["setting"]["rate_bps"]  # the BDP falls back to the configured rate
    assert points.loc[0, "bdp_bytes"] == pytest.approx(rate * probe["rtt_ms_median"] / 1000 / 8)


def test_compare_shows_two_runs_side_by_side_with_ratios(real_results, tmp_path):
    slower = tmp_path / "slower"
    shutil.copytree(real_results, slower)
    records = raw_records(real_results)
    for record in records:
        record["summary"]["phases"]["total_s"]["mean"] *= 2
    kept = records[:-1]
    (slower / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    written = write_comparison(real_results, slower, tmp_path / "compare", set(FORMATS))
    compared = pd.read_csv(written["csv:compare_points"])
    dropped = records[-1]["params"]
    is_dropped = (compared["profile"] == dropped["profile"]) & (
        compared["dp_degree"] == dropped["dp_degree"]
    )
    assert compared.loc[~is_dropped, "iter_ratio"].tolist() == pytest.approx([2.0] * 3)
    assert compared.loc[is_dropped, "status_b"].item() == "missing"
    assert compared.loc[is_dropped, "iter_ratio"].isna().all()
    markdown = written["md"].read_text()
    assert markdown.count("×2.00") >= 3
    assert written["html"].read_text().count("data:image/png;base64,") == 1


def test_repeats_are_pooled_over_their_iterations(real_results):
    """Two repeats of a point: the pooled mean and spread equal those of all their timed
    iterations together (a population standard deviation, as the trainer reports)."""
    base = next(r for r in raw_records(real_results) if r["params"]["profile"] == "default")
    iterations = [[0.10, 0.12, 0.14], [0.20, 0.26]]
    records = []
    for repeat, times in enumerate(iterations):
        summary = json.loads(json.dumps(base["summary"]))
        summary["timed_iterations"] = len(times)
        summary["phases"]["total_s"] |= {
            "mean": statistics.fmean(times),
            "std": statistics.pstdev(times),
        }
        cell_id = base["cell_id"].replace("|r0", f"|r{repeat}")
        params = dict(base["params"], repeat=repeat)
        records.append(dict(base, cell_id=cell_id, params=params, summary=summary))
    points = points_frame(cells_frame(typed(*records), {}, {}))
    everything = [t for times in iterations for t in times]
    assert points["iter_mean_s"].item() == pytest.approx(statistics.fmean(everything))
    assert points["iter_std_s"].item() == pytest.approx(statistics.pstdev(everything))
    assert points["timed_iterations"].item() == 5


def test_bad_input_names_the_file_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as error:
        write_report(tmp_path, out, {"md"})
    assert error.value.field == "cells.jsonl" and str(tmp_path) in str(error.value)
    assert not out.exists()
    with pytest.raises(ConfigError) as error:
        parse_formats("md,pdf")
    assert error.value.field == "--format" and "pdf" in str(error.value)


def test_command_writes_only_the_chosen_formats(real_results, tmp_path):
    app = typer.Typer()
    app.command()(report)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(real_results), "-o", str(out), "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "report.md",
        "report_cells.csv",
        "report_points.csv",
    ]


def test_page_renders_in_headless_chromium(with_problems, tmp_path):
    """The bench script renders the page and checks the DOM and the screenshot."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: apt-get install chromium (CI installs it)")
    command = [
        sys.executable,
        str(ROOT / "bench" / "report_screenshot.py"),
        str(with_problems),
        "-o",
        str(tmp_path),
        "--json",
    ]
    # The bench imports this checkout's packages, whichever checkout is installed.
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["met"], result
    assert result["dom_tables"] == 6 and result["dom_images"] == 4
    assert (tmp_path / "report-screenshot.png").stat().st_size > 50_000
