"""The report's figures (matplotlib, no pyplot state): iteration time and throughput against
the measured round trip, slowdown against the bandwidth-delay product, phase bars per setting,
and two runs side by side. Failed or missing points are marked on the figures, not dropped.
"""

from __future__ import annotations

import io
import math

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments.report.tables import fmt_rate, seconds_unit, variant_labels

# A palette that stays distinct for colour-blind readers and in greyscale print.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
MAX_NOTE_LINES = 6
PANELS_PER_ROW = 4
PHASE_COLOURS = {
    "compute_s": ("compute", "#0072B2"),
    "comm_wait_s": ("comm wait", "#D55E00"),
    "ps_sync_s": ("PS sync", "#E69F00"),
    "optimizer_s": ("optimizer", "#009E73"),
    "idle_s": ("bubble/idle", "#BBBBBB"),
}
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
    "legend.frameon": False,
}


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG (150 dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    return buffer.getvalue()


def _panels(n: int, title: str) -> tuple[Figure, list]:
    """A figure of `n` panels, at most PANELS_PER_ROW a row; unused grid cells hidden."""
    columns = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(min(4.6 * columns, 16), 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten().tolist()
    for unused in axes[n:]:
        unused.set_visible(False)
    figure.suptitle(title, fontweight="bold")
    return figure, axes[:n]


def _by_variant(points: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    labels = variant_labels(points)
    return [(label, points[labels == label]) for label in labels.drop_duplicates()]


def _rate_label(rate_bps: float) -> str:
    return fmt_rate(rate_bps, none="unlimited")


def _log_x_if_wide(axis, values: pd.Series) -> None:
    """A log x axis with plain tick labels when the values span more than 20×."""
    values = values[values > 0]
    if len(values) and values.max() / values.min() > 20:
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _mark_unmeasured(axis, points: pd.DataFrame, name) -> None:
    """Say which points have no measurement (`name(point)` names one), so an absent marker is
    never silent; a panel with none measured says so across its middle."""
    bad = points[points["status"] != "ok"]
    if bad.empty:
        return
    if len(bad) == len(points):
        statuses = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        axis.text(
            0.5,
            0.5,
            f"no measurement\n({statuses})",
            transform=axis.transAxes,
            ha="center",
            va="center",
            color="#B00020",
            fontsize=10,
        )
        axis.set_xticks([])
        axis.set_yticks([])
        return
    lines = [f"{name(p)}: {p.status}" for p in bad.itertuples()]
    if len(lines) > MAX_NOTE_LINES:
        lines = lines[: MAX_NOTE_LINES - 1] + [f"+{len(lines) - MAX_NOTE_LINES + 1} more"]
    axis.text(
        0.98,
        0.02,
        "\n".join(lines),
        transform=axis.transAxes,
        ha="right",
        va="bottom",
        color="#B00020",
        fontsize=8,
    )


def _label_points(axis, frame: pd.DataFrame, x: str, y: pd.Series) -> None:
    """Write each point's network setting next to its marker."""
    for point, value in zip(frame.itertuples(), y, strict=True):
        axis.annotate(
            point.profile,
            (getattr(point, x), value),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
            color="#444",
        )


def _vs_rtt(points: pd.DataFrame, value: str, title: str, ylabel: str, scale: float) -> Figure:
    """One panel per variant, one line per configured rate, x = measured RTT."""
    variants = _by_variant(points)
    figure, axes = _panels(len(variants), title)
    for axis, (label, group) in zip(axes, variants, strict=True):
        measured = group[(group["status"] == "ok") & group["rtt_ms"].notna()]
        rates = measured["rate_bps"].fillna(float("inf"))
        top = 0.0
        for k, rate in enumerate(sorted(rates.unique(), reverse=True)):
            line = measured[rates == rate].sort_values("rtt_ms")
            y = line[value] * scale
            error = line["iter_std_s"] * scale if value == "iter_mean_s" else None
            axis.errorbar(
                line["rtt_ms"],
                y,
                yerr=error,
                label=_rate_label(line["rate_bps"].iloc[0]),
                color=COLOURS[k % len(COLOURS)],
                marker=MARKERS[k % len(MARKERS)],
                capsize=3,
                linewidth=1.6,
                markersize=6,
            )
            _label_points(axis, line, "rtt_ms", y)
            top = max(top, (y + (0 if error is None else error)).max())
        _log_x_if_wide(axis, measured["rtt_ms"])
        axis.margins(x=0.12)
        axis.set_title(label)
        axis.set_xlabel("measured RTT (ms)")
        axis.set_ylabel(ylabel)
        axis.set_ylim(0, top * 1.15 if top > 0 else 1)
        if len(measured):
            axis.legend(title="rate")
        _mark_unmeasured(axis, group, lambda p: p.profile)
    return figure


def iteration_vs_rtt(points: pd.DataFrame) -> Figure:
    """Mean iteration time (± spread) against measured RTT."""
    scale, unit = seconds_unit(points["iter_mean_s"].max())
    return _vs_rtt(
        points, "iter_mean_s", "Iteration time vs round trip", f"iteration time ({unit})", scale
    )


def throughput_vs_rtt(points: pd.DataFrame) -> Figure:
    """Training throughput against measured RTT, tokens/s on the right axis when fixed."""
    figure = _vs_rtt(points, "samples_s", "Throughput vs round trip", "samples/s", 1.0)
    ok = points[points["status"] == "ok"]
    per_sample = (ok["tokens_per_iteration"] / ok["samples_per_iteration"]).dropna().unique()
    if len(per_sample) == 1:
        tokens = float(per_sample[0])
        for axis in [a for a in figure.axes if a.lines]:
            right = axis.secondary_yaxis(
                "right", functions=(lambda x: x * tokens, lambda x: x / tokens)
            )
            right.set_ylabel("tokens/s")
    return figure


def _bytes(value: float, _position=None) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def slowdown_vs_bdp(points: pd.DataFrame) -> Figure:
    """Slowdown against the measured bandwidth-delay product, one line per variant."""
    figure, (axis,) = _panels(1, "Slowdown vs bandwidth-delay product")
    figure.set_size_inches(6.4, 4.2)
    measured = points[points["slowdown"].notna() & (points["bdp_bytes"] > 0)]
    for k, (label, group) in enumerate(_by_variant(measured)):
        axis.plot(
            group["bdp_bytes"],
            group["slowdown"],
            label=label,
            color=COLOURS[k % len(COLOURS)],
            marker=MARKERS[k % len(MARKERS)],
            linestyle="none",
            markersize=7,
            alpha=0.9,
        )
    highest = measured.sort_values("slowdown").drop_duplicates("profile", keep="last")
    _label_points(axis, highest, "bdp_bytes", highest["slowdown"])
    axis.axhline(1.0, color="#666", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(_bytes))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.margins(x=0.1)
    axis.set_xlabel("bandwidth-delay product (measured rate × RTT)")
    axis.set_ylabel("slowdown vs default network (×)")
    axis.set_ylim(0, max(1.0, measured["slowdown"].max()) * 1.15)
    if len(measured):
        axis.legend(title="variant")
    labels = variant_labels(points)
    _mark_unmeasured(axis, points, lambda p: f"{p.profile} · {labels[p.Index]}")
    return figure


def phase_bars(points: pd.DataFrame) -> Figure:
    """Stacked phase bars per network setting, one panel per variant; unmeasured points are
    labelled where their bar would be."""
    variants = _by_variant(points)
    figure, axes = _panels(len(variants), "Where the iteration goes")
    scale, unit = seconds_unit(points["iter_mean_s"].max())
    handles = []
    for axis, (label, group) in zip(axes, variants, strict=True):
        axis.set_title(label)
        if not (group["status"] == "ok").any():
            _mark_unmeasured(axis, group, lambda p: p.profile)
            continue
        positions = list(range(len(group)))
        bottom = pd.Series(0.0, index=group.index)
        handles = []
        for column, (name, colour) in PHASE_COLOURS.items():
            height = group[column].fillna(0) * scale
            handles.append(
                axis.bar(positions, height, bottom=bottom, label=name, color=colour, width=0.6)
            )
            bottom += height
        for position, point in zip(positions, group.itertuples(), strict=True):
            if point.status != "ok":
                axis.text(
                    position,
                    0,
                    point.status,
                    ha="center",
                    va="bottom",
                    color="#B00020",
                    rotation=90,
                    fontsize=9,
                )
        axis.set_xticks(positions, group["profile"].tolist(), rotation=30, ha="right")
        axis.set_ylabel(f"time per iteration ({unit})")
        axis.grid(axis="x", visible=False)
    if handles:
        names = [name for name, _ in PHASE_COLOURS.values()]
        figure.legend(handles, names, loc="outside right upper", title="phase")
    return figure


def comparison_bars(compared: pd.DataFrame, name_a: str, name_b: str) -> Figure:
    """Two runs per point: iteration times side by side (top), B/A (bottom). Points that
    neither run measured are counted in a note instead of drawn."""
    labels = variant_labels(compared)
    either = (compared["status_a"] == "ok") | (compared["status_b"] == "ok")
    shown = compared[either]
    figure = Figure(figsize=(min(max(6.0, 0.9 * len(shown) + 2), 16), 6.4), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    figure.suptitle(f"{name_a} vs {name_b}", fontweight="bold")
    positions = list(range(len(shown)))
    values = pd.concat([shown["iter_mean_s_a"], shown["iter_mean_s_b"]]).dropna()
    scale, unit = seconds_unit(values.max() if len(values) else 1.0)
    width = 0.38
    sides = ((-1, "_a", name_a, COLOURS[0]), (1, "_b", name_b, COLOURS[1]))
    for offset, suffix, name, colour in sides:
        top.bar(
            [p + offset * width / 2 for p in positions],
            shown["iter_mean_s" + suffix].fillna(0) * scale,
            yerr=shown["iter_std_s" + suffix].fillna(0) * scale,
            width=width,
            label=name,
            color=colour,
            capsize=3,
        )
    if len(values) and values.max() / values.min() > 20:
        top.set_yscale("log")
    top.set_ylabel(f"iteration time ({unit})")
    top.legend()
    ratios = shown["iter_ratio"]
    bottom.bar(positions, ratios.fillna(0), width=0.55, color=COLOURS[2])
    bottom.axhline(1.0, color="#666", linestyle="--", linewidth=1)
    for position, row in zip(positions, shown.itertuples(), strict=True):
        ok = row.status_a == row.status_b == "ok"
        if ok:
            bottom.text(
                position,
                row.iter_ratio,
                f"×{row.iter_ratio:.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            continue
        missing = [
            f"{side} {status}"
            for side, status in (("A", row.status_a), ("B", row.status_b))
            if status != "ok"
        ]
        bottom.text(
            position,
            0.02,
            ", ".join(missing),
            ha="center",
            va="bottom",
            fontsize=8,
            color="#B00020",
            rotation=90,
        )
    bottom.set_ylabel("B/A iteration time")
    bottom.set_ylim(0, max(1.0, ratios.max() if ratios.notna().any() else 1.0) * 1.25)
    ticks = [f"{p.profile}\n{labels[p.Index]}" for p in shown.itertuples()]
    bottom.set_xticks(positions, ticks, fontsize=8, rotation=30 if len(shown) > 8 else 0)
    for axis in (top, bottom):
        axis.grid(axis="x", visible=False)
    unmeasured = len(compared) - len(shown)
    if unmeasured:
        note = f"{unmeasured} point(s) measured by neither run: see the table"
        top.text(
            0.99,
            0.98,
            note,
            transform=top.transAxes,
            ha="right",
            va="top",
            color="#B00020",
            fontsize=8,
        )
    return figure


def report_figures(points: pd.DataFrame) -> dict[str, Figure]:
    """Every figure of a single-run report, by file stem."""

    with matplotlib.rc_context(STYLE):
        figures = {
            "iteration_vs_rtt": iteration_vs_rtt(points),
            "throughput_vs_rtt": throughput_vs_rtt(points),
            "phases": phase_bars(points),
        }
        if points["slowdown"].notna().any():
            figures["slowdown_vs_bdp"] = slowdown_vs_bdp(points)
    return figures


def comparison_figures(compared: pd.DataFrame, name_a: str, name_b: str) -> dict[str, Figure]:
    """The figures of a two-run comparison, by file stem."""

    with matplotlib.rc_context(STYLE):
        return {"compare_iteration": comparison_bars(compared, name_a, name_b)}
