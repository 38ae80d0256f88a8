"""Calibrations from a results folder: each predicted cell calibrated on a measured one, its
twin on the unshaped network where there is one (`ResultsCalibration`)."""

from __future__ import annotations

import statistics
from dataclasses import replace

import numpy as np

from experiments.axes import AXES, match_tiers
from experiments.costmodel.analytic import StageCompute
from experiments.costmodel.calibrate import (
    Calibration,
    fit_native_rate,
    from_stage_times,
    from_total,
    without_stage_collectives,
    workload_of,
)
from experiments.costmodel.network import DEFAULT_NATIVE, Native
from experiments.costmodel.tcp import SEGMENT_HEADER_BYTES
from experiments.results import CELLS, CellRecord, Summary
from inventory.errors import ConfigError
from netem.profile import Profile
from trainer.config import load_config


def native_from_probe(
    probe: list[dict] | None, fallback: Native, mtus: list[int] | None = None
) -> Native:
    """Native latency (half the median RTT) and rate from an unshaped cell's probe; the MTU
    the smallest of the hosts' interfaces (`mtus`, read beside their TCP settings), else the
    probe's segment with its headers."""
    rtts = [p["rtt_ms_median"] for p in probe or [] if p.get("rtt_ms_median")]
    rates = [p["throughput_bps"] for p in probe or [] if p.get("throughput_bps")]
    segments = [p["mss_bytes"] for p in probe or [] if p.get("mss_bytes")]
    latency = statistics.median(rtts) / 2 / 1000 if rtts else fallback.latency_s
    rate = statistics.median(rates) if rates else fallback.rate_bps
    mtu = min(segments) + SEGMENT_HEADER_BYTES if segments else fallback.mtu
    known = [m for m in mtus or [] if m]
    if known:
        mtu = min(known)
    return Native(latency_s=latency, rate_bps=rate, mtu=mtu)


def _profile_of(record: CellRecord) -> Profile | None:
    setting = record.network.setting
    if setting.get("kind") != "profile":
        return None
    fields = {k: v for k, v in setting.items() if k in Profile.model_fields}
    return Profile(**fields)


def stage_times(summary: Summary, n_stages: int) -> StageCompute | None:
    """Per-stage means over replicas, or None when the engine did not time its steps."""
    if "forward_s" not in summary.phases_measured:
        return None
    rows = [[] for _ in range(n_stages)]
    for entry in summary.stages:
        if entry["stage"] not in range(n_stages):
            raise IndexError(f"stage {entry['stage']!r} of {n_stages}")
        rows[entry["stage"]].append(entry)
    if any(not row for row in rows):
        return None

    def mean(row: list[dict], get) -> float:
        return statistics.fmean(get(entry) for entry in row)

    forward = np.array([mean(row, lambda e: e["forward_per_micro_s"]) for row in rows])
    backward = np.array([mean(row, lambda e: e["backward_per_micro_s"]) for row in rows])
    optimizer = np.array([mean(row, lambda e: e["mean_s"]["optimizer_s"]) for row in rows])
    if (forward <= 0).any() or (backward <= 0).any():
        return None
    return StageCompute(forward, backward, optimizer)


def _check_measured(record: CellRecord, source: str) -> None:
    """Refuse a finished cell that cannot be calibrated on: a trainer configuration that is not
    one, or stage times that are not finite numbers of seconds."""
    where = f"{CELLS}: cell {record.cell_id}"
    try:
        config = load_config(None, record.trainer)
    except ConfigError as error:
        raise ConfigError(source, f"{where}: trainer.{error.field}", error.message) from None
    try:
        stages = stage_times(record.summary, config.pipeline)
    except (KeyError, TypeError, IndexError, ValueError):
        raise ConfigError(
            source, f"{where}: summary.stages", "must give each stage (0 to pipeline - 1) its "
            "forward_per_micro_s, backward_per_micro_s and mean_s.optimizer_s",
        ) from None  # fmt: skip
    times = [] if stages is None else [stages.forward_s, stages.backward_s, stages.optimizer_s]
    if not all(np.isfinite(column).all() and (column >= 0).all() for column in times):
        message = "holds a time that is not a finite number of seconds"
        raise ConfigError(source, f"{where}: summary.stages", message)


class ResultsCalibration:
    """Calibrations from a results folder's cells, chosen per predicted cell.

    For a cell, the measured cell used is: the one named by `cell_id`; else an unshaped cell
    with the same coordinates but the profile, and the same repeat (the twin measured in the
    same pass); else the same but any repeat; else one sharing fewer and fewer coordinates, in
    the order `experiments.axes` lets them go (the TCP setting, then engine and DP mode, then
    layout, precision and recompute), down to the DP degree and micro-batch; else the first
    usable cell. Its probe gives the native network.
    """

    def __init__(
        self,
        records: list[CellRecord],
        fallback: Native = DEFAULT_NATIVE,
        cell_id: str | None = None,
        source: str = "results",
    ):
        self.records = [r for r in records if r.ok and r.summary.stages]
        self.fallback = fallback
        if not self.records:
            raise ConfigError(source, "cells.jsonl", "holds no finished cell to calibrate on")
        if cell_id is not None and cell_id not in {r.cell_id for r in self.records}:
            raise ConfigError(source, "--calibrate-cell", f"no finished cell {cell_id!r}")
        for record in self.records:
            _check_measured(record, source)
        self.cell_id = cell_id
        self._cache: dict[str, Calibration] = {}

    def choose(self, params: dict) -> CellRecord:
        """The measured record to calibrate a cell with coordinates `params` on."""
        if self.cell_id is not None:
            return next(r for r in self.records if r.cell_id == self.cell_id)
        unshaped = [
            r for r in self.records if _profile_of(r) is not None and _profile_of(r).is_default
        ]
        # coordinates a caller leaves out are those of a cell from before their axis
        params = {a.field: a.neutral for a in AXES if a.has_neutral} | params
        for keys in match_tiers():
            for record in unshaped:
                if all(getattr(record.params, k) == params.get(k) for k in keys):
                    return record
        return self.records[0]

    def for_cell(self, params: dict) -> Calibration:
        """The calibration for a cell with coordinates `params` (profile, dp, micro_batch, …)."""
        record = self.choose(params)
        if record.cell_id not in self._cache:
            recorded = [tcp for tcp in record.network.tcp.values() if tcp]
            tcp = recorded[0] if recorded else None  # the hosts are taken to be alike
            shares = [
                p["receive_share"] for p in record.network.probe or [] if p.get("receive_share")
            ]
            if tcp is not None and shares:
                tcp = tcp | {"receive_share": statistics.median(shares)}
            self._cache[record.cell_id] = replace(self._calibrate(record), tcp=tcp)
        return self._cache[record.cell_id]

    def _calibrate(self, record: CellRecord) -> Calibration:
        config = record.config()
        profile = _profile_of(record)
        native = self.fallback
        if profile is not None and profile.is_default:
            mtus = list(record.network.mtu.values())
            native = native_from_probe(record.network.probe, self.fallback, mtus)
        source = f"measured cell {record.cell_id}"
        stages = stage_times(record.summary, config.pipeline)
        measured = record.summary.iteration_s
        if stages is not None and profile is not None:
            workload = workload_of(config)
            stages = without_stage_collectives(stages, workload, profile, native)
            rate = fit_native_rate(workload, stages, profile, native, measured)
            native = replace(native, rate_bps=rate)
            return from_stage_times(workload, stages, source, native)
        if stages is not None:
            return from_stage_times(workload_of(config), stages, source, native)
        if profile is None:
            raise ConfigError(
                source, "network", "a pair-matrix cell cannot be fitted; name another"
            )
        return from_total(config, profile, measured, source, native)
