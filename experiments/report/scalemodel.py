"""A scale model's report section: its measured slowdowns beside the target's predicted ones.

A matrix `wanlab scale` wrote carries a [scale] table: for each of its cells, the target cell it
stands for, the cost model's iteration time for that target cell, and the target's own measured
time where the target is a results folder of a real run. A slowdown is a cell's
time over the time of the cell on the target's baseline profile with the same other settings.
"""

from __future__ import annotations

import pandas as pd

from experiments.axes import scale_axes
from experiments.report.tables import DASH, fmt_ratio, fmt_seconds, variant_labels

KEYS = [axis.field for axis in scale_axes() if axis.field != "profile"]
"""A scale cell's coordinates but its (lab or target) profile."""


def scale_rows(scale: dict) -> pd.DataFrame:
    """The [scale] table's cells as a frame, with each target cell's predicted slowdown (and
    its measured one, where the target ran)."""
    cells = pd.DataFrame(scale["cells"]).rename(columns={"predicted_s": "target_s"})
    if "measured_s" not in cells:
        cells["measured_s"] = float("nan")
    base = cells[cells["target_profile"] == scale["baseline_profile"]].set_index(KEYS)
    cells = cells.join(base["target_s"].rename("target_base_s"), on=KEYS)
    cells = cells.join(base["measured_s"].rename("measured_base_s"), on=KEYS)
    cells["target_slowdown"] = cells["target_s"] / cells["target_base_s"]
    cells["measured_slowdown"] = cells["measured_s"] / cells["measured_base_s"]
    return cells


def scale_comparison(points: pd.DataFrame, scale: dict) -> pd.DataFrame:
    """The points joined to their target cells, with both slowdowns and their `difference`."""
    cells = scale_rows(scale)
    merged = points.merge(cells, on=["profile", *KEYS], how="inner")
    lab_base = merged[merged["target_profile"] == scale["baseline_profile"]]
    lab_base = lab_base.set_index(KEYS)["iter_mean_s"].rename("lab_base_s")
    merged = merged.join(lab_base, on=KEYS)
    merged["lab_slowdown"] = merged["iter_mean_s"] / merged["lab_base_s"]
    merged["difference"] = merged["lab_slowdown"] / merged["target_slowdown"] - 1
    return merged


def scale_table(points: pd.DataFrame, scale: dict) -> pd.DataFrame:
    """Per point: target network, variant, the scale model's time and slowdown, the target's
    predicted time and slowdown, and how far apart the two slowdowns are."""
    merged = scale_comparison(points, scale)
    labels = variant_labels(merged)
    ran = merged["measured_s"].notna().any()
    rows = []
    for index, row in merged.iterrows():
        done = row["status"] == "ok"
        shown = {
            "target network": row["target_profile"],
            "variant": labels[index],
            "scale model": fmt_seconds(row["iter_mean_s"]) if done else row["status"],
            "slowdown (scale model)": fmt_ratio(row["lab_slowdown"]) if done else DASH,
            "target (predicted)": fmt_seconds(row["target_s"]),
            "slowdown (target)": fmt_ratio(row["target_slowdown"]),
            "difference": DASH if pd.isna(row["difference"]) else f"{row['difference']:+.1%}",
        }
        if ran:
            shown["target (measured)"] = fmt_seconds(row["measured_s"])
            shown["slowdown (target, measured)"] = fmt_ratio(row["measured_slowdown"])
        rows.append(shown)
    return pd.DataFrame(rows)
