"""The report's tables as frames of display strings, and their Markdown and HTML rendering.

Numbers are shown in the unit that suits their size (µs, ms, s; bit/s to Gbit/s). A point that
did not produce a measurement reads `failed` or `missing`, never a blank.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from experiments.axes import label_order
from experiments.report.data import is_baseline

DASH = "—"


def _absent(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sig(value: float, digits: int = 3) -> str:
    """`value` with `digits` significant digits, trailing zeros kept: 74.0, 107, 0.0364."""
    if value == 0 or math.isinf(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def seconds_unit(seconds: float) -> tuple[float, str]:
    """The scale and unit name that suit a duration in seconds."""
    if seconds >= 1:
        return 1.0, "s"
    if seconds >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


def fmt_seconds(seconds: float | None) -> str:
    """A duration with three significant digits in its own unit, e.g. `30.5 ms`."""
    if _absent(seconds):
        return DASH
    scale, unit = seconds_unit(seconds)
    return f"{sig(seconds * scale)} {unit}"


def fmt_mean_spread(mean: float, spread: float) -> str:
    """Mean ± spread in the mean's unit, e.g. `30.5 ± 3.6 ms`."""
    scale, unit = seconds_unit(mean)
    spread_text = DASH if _absent(spread) else sig(spread * scale, 2)
    return f"{sig(mean * scale)} ± {spread_text} {unit}"


def fmt_rate(bps: float | None, none: str = DASH) -> str:
    """A bit rate, e.g. `200 Mbit/s`, `9.74 Gbit/s`; `none` when absent."""
    if _absent(bps):
        return none
    for scale, unit in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bps >= scale:
            return f"{sig(bps / scale)} {unit}"
    return f"{sig(bps)} bit/s"


def fmt_delay(ms: float | None) -> str:
    """A configured delay in milliseconds, e.g. `10 ms`."""
    return DASH if _absent(ms) else f"{ms:g} ms"


def fmt_rtt(ms: float | None) -> str:
    """A measured round trip in milliseconds, three significant digits."""
    return DASH if _absent(ms) else f"{sig(ms)} ms"


def fmt_count(value: float | None) -> str:
    """A rate of things per second: thousands separated, else three significant digits."""
    if _absent(value):
        return DASH
    return f"{value:,.0f}" if value >= 1000 else sig(value)


def fmt_ratio(value: float | None) -> str:
    """A ratio as `×2.43`."""
    return DASH if _absent(value) else f"×{value:.2f}"


def fmt_share(value: float | None) -> str:
    """A fraction as a whole percentage."""
    return DASH if _absent(value) else f"{value:.0%}"


def variant_labels(points: pd.DataFrame) -> pd.Series:
    """Each point's column label: its DP degree, plus each other axis that takes more than one
    value in these results (`experiments.axes`: the configuration's, then the network's), and
    the compute where it varies."""

    def varies(column: str) -> bool:
        return column in points and points[column].nunique() > 1

    labelled = [
        axis
        for axis in label_order()
        if axis.label is not None and (axis.always_labelled or varies(axis.field))
    ]

    def label(row) -> str:
        parts = [text for axis in labelled if (text := axis.label(row)) is not None]
        if varies("compute"):
            parts.append(str(row.compute))
        return " · ".join(parts)

    return pd.Series([label(row) for row in points.itertuples()], index=points.index)


def _outcome(point) -> str | None:
    """`failed`/`missing` for a point without a measurement; None when it has one."""
    return None if point.status == "ok" else point.status


def _repeats_note(point) -> str:
    return "" if point.repeats_ok == point.repeats else f" ({point.repeats_ok}/{point.repeats} ok)"


def network_columns(points: pd.DataFrame) -> pd.DataFrame:
    """One row per network setting: configured one-way delay and rate, measured RTT and rate."""
    rows = []
    for profile, group in points.groupby("profile", sort=False):
        known = group.dropna(subset=["setting"])
        first = known.iloc[0] if len(known) else None
        matrix = first is not None and first.setting_kind == "pairs"
        delay = fmt_delay(first.delay_ms) if first is not None else DASH
        rows.append(
            {
                "network": profile,
                "one-way delay": f"{delay} (mean of pairs)" if matrix else delay,
                "rate": DASH if first is None else fmt_rate(first.rate_bps, none="unlimited"),
                "RTT (measured)": fmt_rtt(group["rtt_ms"].median()),
                "throughput (measured)": fmt_rate(group["probe_bps"].median()),
            }
        )
    return pd.DataFrame(rows)


def iteration_table(points: pd.DataFrame) -> pd.DataFrame:
    """Rows: network settings; columns: the setting, then one per variant holding the mean
    iteration time ± spread and the slowdown against the default network."""
    labels = variant_labels(points)
    table = network_columns(points).set_index("network")
    for label in labels.drop_duplicates():
        table[label] = DASH
    for index, point in zip(points.index, points.itertuples(), strict=True):
        text = _outcome(point)
        if text is None:
            text = fmt_mean_spread(point.iter_mean_s, point.iter_std_s)
            if not _absent(point.slowdown):
                text += f" ({fmt_ratio(point.slowdown)})"
            text += _repeats_note(point)
        table.loc[point.profile, labels[index]] = text
    return table.reset_index()


def _point_rows(points: pd.DataFrame, columns) -> pd.DataFrame:
    """One row per point: network, variant, then `columns(point)` or its outcome."""
    labels = variant_labels(points)
    rows = []
    for index, point in zip(points.index, points.itertuples(), strict=True):
        row = {"network": point.profile, "variant": labels[index]}
        outcome = _outcome(point)
        values = columns(point)
        if outcome is not None:
            values = {key: outcome for key in values}
        rows.append(row | values)
    return pd.DataFrame(rows)


def throughput_table(points: pd.DataFrame) -> pd.DataFrame:
    """Samples/s, tokens/s, hosts, samples/s per host and per-host efficiency per point."""
    return _point_rows(
        points,
        lambda p: {
            "samples/s": fmt_count(p.samples_s),
            "tokens/s": fmt_count(p.tokens_s),
            "hosts": DASH if _absent(p.hosts) else f"{p.hosts:.0f}",
            "samples/s per host": fmt_count(p.samples_s_per_host),
            "per-host efficiency": fmt_share(p.efficiency),
        },
    )


PHASE_COLUMNS = {
    "compute": "compute_s",
    "bubble/idle": "idle_s",
    "comm wait": "comm_wait_s",
    "PS sync": "ps_sync_s",
    "optimizer": "optimizer_s",
}


def phase_table(points: pd.DataFrame) -> pd.DataFrame:
    """Each point's iteration split into phases: time and share of the iteration."""

    def phases(point) -> dict:
        total = point.iter_mean_s
        values = {"iteration": fmt_seconds(total)}
        for name, column in PHASE_COLUMNS.items():
            part = getattr(point, column)
            if _absent(part):  # a workload's job did not time this phase
                values[name] = "not measured"
            else:
                values[name] = f"{fmt_seconds(part)} ({fmt_share(part / total)})"
        return values

    return _point_rows(points, phases)


def has_predictions(points: pd.DataFrame) -> bool:
    """Whether any point carries a cost-model prediction."""
    return bool(points["predicted_s"].notna().any())


def prediction_table(points: pd.DataFrame) -> pd.DataFrame:
    """Predicted against measured iteration time, for points with a prediction."""
    with_prediction = points[points["predicted_s"].notna()]
    return _point_rows(
        with_prediction,
        lambda p: {
            "predicted": fmt_seconds(p.predicted_s),
            "measured": fmt_seconds(p.iter_mean_s),
            "error": DASH if _absent(p.prediction_error) else f"{p.prediction_error:+.1%}",
        },
    )


def placement_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Where the ranks ran: each distinct placement of the finished cells, pipelines apart."""
    columns = ["dp_degree", "placement_rule", "placement"]
    if "placement" not in cells:
        return pd.DataFrame(columns=columns)
    done = cells[(cells["status"] == "ok") & cells["placement"].notna()]
    placed = done[columns].fillna(DASH).drop_duplicates().sort_values(["dp_degree", "placement"])
    return placed.rename(columns={"placement_rule": "rule", "placement": "hosts by pipeline"})


def problems_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells that failed or have no record, with the reason."""
    bad = cells[cells["status"] != "ok"]
    return bad[["cell_id", "status", "reason"]].fillna(DASH).reset_index(drop=True)


def comparison_table(compared: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    """Two runs' points side by side: iteration time, samples/s and slowdown, with B/A."""
    labels = variant_labels(compared)
    rows = []
    for index, row in zip(compared.index, compared.itertuples(), strict=True):

        def side(suffix: str, row=row) -> tuple[str, str, str]:
            status = getattr(row, "status" + suffix)
            if status != "ok":
                return status, status, status
            mean, spread = getattr(row, "iter_mean_s" + suffix), getattr(row, "iter_std_s" + suffix)
            return (
                fmt_mean_spread(mean, spread),
                fmt_count(getattr(row, "samples_s" + suffix)),
                fmt_ratio(getattr(row, "slowdown" + suffix)),
            )

        iter_a, samples_a, slow_a = side("_a")
        iter_b, samples_b, slow_b = side("_b")
        rows.append(
            {
                "network": row.profile,
                "variant": labels[index],
                f"iteration {name_a}": iter_a,
                f"iteration {name_b}": iter_b,
                "iteration B/A": fmt_ratio(row.iter_ratio),
                f"samples/s {name_a}": samples_a,
                f"samples/s {name_b}": samples_b,
                "samples/s B/A": fmt_ratio(row.samples_ratio),
                f"slowdown {name_a}": slow_a,
                f"slowdown {name_b}": slow_b,
            }
        )
    return pd.DataFrame(rows)


def baseline_note(points: pd.DataFrame) -> str:
    """Which setting the slowdowns are measured against, or why there are none."""
    base = points[is_baseline(points)]
    if base.empty:
        return "No default (unshaped) network in these results: slowdowns are not shown."
    return f"Slowdown is against `{base['profile'].iloc[0]}` with the same variant."


def to_markdown(table: pd.DataFrame) -> str:
    """A frame of strings as a GitHub-style Markdown table."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


NUMERIC_START = tuple("0123456789+-−×—")


def to_html(table: pd.DataFrame) -> str:
    """A frame of strings as an HTML table: numbers right-aligned, words left-aligned,
    `failed`/`missing` cells marked with their own class."""

    def cell(value) -> str:
        text = str(value)
        word = text.split(" ")[0].rstrip(":")
        if word in ("failed", "missing"):
            css = f' class="{word}"'
        else:
            css = "" if text.startswith(NUMERIC_START) else ' class="text"'
        return f"<td{css}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
