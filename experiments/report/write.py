"""Reports from results folders: one run's tables, figures and page, or two runs compared.

`write_report(results, out, formats)` writes any of: `md` (report.md), `csv` and `parquet`
(report_cells.*, one row per cell; report_points.*, one row per point with every derived
number), `html` (report.html, self-contained) and `png` (one file per figure). Input is checked
before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from experiments.report.data import Results, compare_points, load_results
from experiments.report.html import Plot, Section, render_html
from experiments.report.plots import comparison_figures, png_bytes, report_figures
from experiments.report.scalemodel import scale_table
from experiments.report.tables import (
    baseline_note,
    comparison_table,
    has_predictions,
    iteration_table,
    phase_table,
    placement_table,
    prediction_table,
    problems_table,
    throughput_table,
    to_markdown,
)
from inventory.errors import ConfigError
from inventory.safewrite import check_target, write_file
from netem.probe import MIN_WINDOW_RTTS

FORMATS = ("md", "csv", "parquet", "html", "png")
DEFAULT_FORMATS = frozenset(FORMATS)

DEFINITIONS = {
    "iteration time": "Rank 0's wall time per training iteration (forward and backward of every "
    "micro-batch, synchronisation, optimizer step), warm-up iterations excluded. Shown as mean "
    "± standard deviation over every timed iteration of the point's repeats.",
    "slowdown": "Mean iteration time divided by that of the same DP degree, micro-batch, engine "
    "and DP mode on the default (unshaped) network.",
    "one-way delay, rate": "The configured shaping: the delay is added on each host's egress, so "
    "a round trip between two shaped hosts grows by twice the delay. For a pair matrix the delay "
    "is the mean over its pairs and the rate the slowest pair's.",
    "RTT, throughput (measured)": "The median round trip and the bulk rate probed between two of "
    "the cell's hosts just before training, median over the setting's cells.",
    "samples/s, tokens/s": "Samples per iteration (batch × DP degree) and tokens per iteration "
    "(samples × sequence length) divided by the mean iteration time.",
    "per-host efficiency": "Samples/s per host divided by that of the smallest DP degree on the "
    "default network with the same micro-batch, engine and DP mode: 100% means adding hosts and "
    "a worse network cost nothing per host.",
    "phases": "Rank 0's mean time per iteration in each phase. compute = forward + backward; "
    "comm wait = waiting on pipeline sends and receives; PS sync = pushing gradients to and "
    "pulling parameters from the parameter server; bubble/idle = iteration time minus all of "
    "these (pipeline bubble and barrier waits), clipped at zero.",
    "bandwidth-delay product": "Measured throughput × measured RTT, in bytes: how much data is "
    "in flight on a full link.",
    "failed, missing": "A failed cell ran and produced no measurement (its reason is listed); a "
    "missing cell is in the matrix spec but has no record. Neither is dropped.",
}

CAPTIONS = {
    "iteration_vs_rtt": "Mean iteration time (error bars: ± standard deviation) against the "
    "measured RTT; one panel per variant, one line per configured rate.",
    "throughput_vs_rtt": "Training throughput against the measured RTT; one panel per variant, "
    "one line per configured rate.",
    "slowdown_vs_bdp": "Slowdown against the default network, by bandwidth-delay product; one "
    "line per variant, points labelled with their network setting.",
    "phases": "Where rank 0's iteration time goes, per network setting; one panel per variant.",
    "compare_iteration": "Iteration time of the two runs per point (± standard deviation), "
    "B/A above each pair.",
}


def parse_formats(text: str) -> set[str]:
    """`md,csv,html` → {"md", "csv", "html"}; ConfigError naming --format on anything else."""
    chosen = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(chosen - set(FORMATS))
    if unknown or not chosen:
        raise ConfigError(
            None, "--format", f"unknown format {unknown[0]!r}" if unknown else "is empty"
        )
    return chosen


def _check(formats: set[str]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ConfigError(None, "formats", f"unknown format {unknown[0]!r}")


def environment_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per host of every run into the folder: its versions and interface."""
    rows = []
    for number, run in enumerate(runs, start=1):
        for host, facts in (run.get("hosts") or {}).items():
            rows.append(
                {
                    "run": str(number),
                    "host": host,
                    **{k: facts.get(k) for k in ("kernel", "python", "torch", "pyroute2", "cpus")},
                    "interface": facts.get("interface"),
                    "netem": "yes" if facts.get("netem") else "no",
                }
            )
    return pd.DataFrame(rows).fillna("—").astype(str) if rows else pd.DataFrame()


def run_lines(runs: list[dict]) -> list[str]:
    """One line per run into the folder: when it started, on which inventory, how shaped."""
    return [
        f"run {number}: started {run.get('started_at')}, inventory {run.get('inventory')}, "
        f"{'through the delay node' if run.get('delay_node') else 'shaped on the hosts'}"
        for number, run in enumerate(runs, start=1)
    ]


def report_sections(results: Results) -> list[Section]:
    """The tables of one run's report, in reading order."""
    points = results.points
    sections = [
        Section(
            "Iteration time per network setting",
            iteration_table(points),
            baseline_note(points)
            + " Cells: mean ± standard deviation (slowdown). Measured throughput is left out"
            f" (—) where the probe's window lasted under {MIN_WINDOW_RTTS} round trips: it"
            " measured TCP's slow start, not the path." + emulation_note(points),
        ),
        Section("Throughput and per-host efficiency", throughput_table(points)),
        Section(
            "Phase breakdown (rank 0)",
            phase_table(points),
            "Time per iteration in each phase and its share of the iteration.",
        ),
    ]
    if has_predictions(points):
        sections.append(
            Section(
                "Predicted vs measured",
                prediction_table(points),
                "error = predicted / measured − 1.",
            )
        )
    if results.scale is not None:
        sections.append(
            Section(
                "Scale model against its target",
                scale_table(points, results.scale),
                f"This matrix is a scale model of {results.scale['target']}: the target's ranks,"
                " schedule, delays and compute times, with tensors, rates and TCP windows"
                f" scaled by {_factors(results.scale)}. Slowdown: against the target's"
                f" {results.scale['baseline_profile']} network. The target's predicted times are"
                f" the cost model's, calibrated on {results.scale['calibration']}; its measured"
                " ones (where it ran) its own records. difference = slowdown (scale model) /"
                " slowdown (target, predicted) − 1.",
            )
        )
    sections.append(
        Section(
            "Placement",
            placement_table(results.cells).reset_index(drop=True),
            "Each pipeline's hosts, stage 0 first; pipelines apart with ;.",
        )
    )
    sections.append(Section("Failed and missing cells", problems_table(results.cells)))
    return sections


def _factors(scale: dict) -> str:
    """The scale model's factors: one, or one per profile that has its own."""
    own = scale.get("profiles") or {}
    text = f"×{scale['factor']:.3g}"
    if own:
        text += " (" + ", ".join(f"{name} ×{p['factor']:.3g}" for name, p in own.items()) + ")"
    return text


def emulation_note(points: pd.DataFrame) -> str:
    """A sentence naming the emulated-compute cells, if there are any."""
    labels = sorted({str(c) for c in points["compute"].dropna() if c != "real"})
    if not labels:
        return ""
    return (
        f" Compute is {', '.join(labels)}: each stage held its rank for given times while"
        " tensors scaled by that factor crossed the real network (a scale model, not training)."
    )


def _counts(cells: pd.DataFrame) -> dict[str, int]:
    return {
        status: int((cells["status"] == status).sum()) for status in ("ok", "failed", "missing")
    }


def render_markdown(
    title: str,
    meta: list[str],
    sections: list[Section],
    png_names: list[str],
    spec_text: str,
    environment: pd.DataFrame,
) -> str:
    """The Markdown report: the same tables, links to the PNG files, the definitions, the spec
    and the environment."""
    lines = [f"# {title}", "", *(f"{line}  " for line in meta), ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.note:
            lines += [section.note, ""]
        body = to_markdown(section.table) if len(section.table) else "None."
        lines += [body, ""]
    if png_names:
        lines += ["## Figures", ""]
        lines += [f"![{CAPTIONS[Path(n).stem]}]({n})" for n in png_names] + [""]
    lines += ["## How to read this report", ""]
    lines += [f"- **{term}**: {text}" for term, text in DEFINITIONS.items()] + [""]
    if spec_text:
        lines += ["## Matrix spec", "", "```toml", spec_text.rstrip(), "```", ""]
    if len(environment):
        lines += ["## Environment", "", to_markdown(environment), ""]
    return "\n".join(lines)


def _write_outputs(
    out_dir: Path,
    formats: set[str],
    stem: str,
    title: str,
    meta: list[str],
    counts: dict[str, int],
    sections: list[Section],
    frames: dict[str, pd.DataFrame],
    figures: Callable[[], dict[str, Figure]],
    spec_text: str,
    environment: pd.DataFrame,
) -> dict[str, Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(str(out_dir), "-o", "exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(str(out_dir), "-o", f"cannot be made: {error.strerror}") from None
    kinds = [kind for kind in ("csv", "parquet") if kind in formats]
    paths = {f"{kind}:{name}": out_dir / f"{name}.{kind}" for name in frames for kind in kinds}
    paths |= {kind: out_dir / f"{stem}.{kind}" for kind in ("md", "html") if kind in formats}
    for path in paths.values():  # before the figures are drawn
        check_target(path, "-o")
    written: dict[str, Path] = {}
    for name, frame in frames.items():
        for kind in kinds:
            data = frame.to_csv(index=False) if kind == "csv" else frame.to_parquet(index=False)
            written[f"{kind}:{name}"] = write_file(paths[f"{kind}:{name}"], data, "-o")
    drawn = figures() if formats & {"png", "html"} else {}
    pngs = {name: png_bytes(figure) for name, figure in drawn.items()}
    if "png" in formats:
        for name, data in pngs.items():
            written[f"png:{name}"] = write_file(out_dir / f"{name}.png", data, "-o")
    if "md" in formats:
        png_names = [f"{n}.png" for n in pngs] if "png" in formats else []
        markdown = render_markdown(title, meta, sections, png_names, spec_text, environment)
        written["md"] = write_file(paths["md"], markdown, "-o")
    if "html" in formats:
        plots = [Plot(name, CAPTIONS[name], data) for name, data in pngs.items()]
        page = render_html(
            title, meta, counts, sections, plots, DEFINITIONS, spec_text, environment
        )
        written["html"] = write_file(paths["html"], page, "-o")
    return written


def _generated() -> str:
    return "generated " + datetime.now(UTC).isoformat(timespec="seconds")


def write_report(
    results_dir: Path, out_dir: Path, formats: set[str] = DEFAULT_FORMATS
) -> dict[str, Path]:
    """Write one run's report into `out_dir` in `formats`; returns what was written, by kind
    (`md`, `html`, `csv:cells`, `png:phases`, …)."""
    _check(formats)
    results = load_results(results_dir)
    counts = _counts(results.cells)
    meta = [f"results: {Path(results_dir).resolve()}", *run_lines(results.runs), _generated()]
    return _write_outputs(
        Path(out_dir),
        formats,
        "report",
        f"wanlab report: {results.name}",
        meta,
        counts,
        report_sections(results),
        {"report_cells": results.cells, "report_points": results.points},
        lambda: report_figures(results.points),
        results.spec_text,
        environment_frame(results.runs),
    )


def _names(a: Results, b: Results) -> tuple[str, str]:
    if a.name != b.name:
        return a.name, b.name
    if a.directory.name != b.directory.name:
        return a.directory.name, b.directory.name
    return "A", "B"


def write_comparison(
    a_dir: Path, b_dir: Path, out_dir: Path, formats: set[str] = DEFAULT_FORMATS
) -> dict[str, Path]:
    """Write two runs side by side (B/A ratios per point) into `out_dir` in `formats`."""
    _check(formats)
    a, b = load_results(a_dir), load_results(b_dir)
    name_a, name_b = _names(a, b)
    compared = compare_points(a.points, b.points)
    meta = [
        f"A = {name_a}: {Path(a_dir).resolve()}",
        f"B = {name_b}: {Path(b_dir).resolve()}",
        _generated(),
    ]
    sections = [
        Section(
            "A and B side by side",
            comparison_table(compared, "A", "B"),
            "Iteration time: mean ± standard deviation. B/A is B's value divided by A's: "
            "an iteration ratio below ×1.00 means B is faster.",
        ),
        Section("Failed and missing cells in A", problems_table(a.cells)),
        Section("Failed and missing cells in B", problems_table(b.cells)),
    ]
    counts = {
        f"{status} in {side}": n
        for side, r in (("A", a), ("B", b))
        for status, n in _counts(r.cells).items()
    }
    return _write_outputs(
        Path(out_dir),
        formats,
        "compare",
        f"wanlab comparison: {name_a} vs {name_b}",
        meta,
        counts,
        sections,
        {"compare_points": compared},
        lambda: comparison_figures(compared, f"A: {name_a}", f"B: {name_b}"),
        "",
        pd.DataFrame(),
    )
