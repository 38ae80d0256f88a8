"""The trainer across the local fleet's namespaces, gloo over the veths, under a bandwidth limit.

Two ranks on two hosts (pipeline 1, dp_degree 2), every data-parallel mode side by side in one
matrix, unshaped and under a rate the hosts' kernels enforce (HTB on each host's egress). Each
mode's sync must then grow by what its own traffic needs from the busiest egress: with D = 2,
`ps-star` pushes the whole gradient N one way and sends the average back (2·N/β), `ps` reduces
along the chain and broadcasts back (2·N/β as well), `allreduce` moves N/D each way at once
(N/β), and `sharded-ps` sends each host's share of the buckets (its owner's, round-robin by
tensor) both ways at once.

Rank 0 is the star's server: its sync phase ends once the average is handed to its socket, so
it holds the push (one way) and what of the pull its socket buffers do not take; the iteration,
which ends on a barrier, holds both ways.
"""

from __future__ import annotations

import json

import numpy as np

from trainer.dataparallel import bucket_spans
from trainer.model import CONFIGS
from trainer.partition import split_layers, stage_tensor_sizes

RATE_BPS = 100e6
MODEL = "cpu-mini"  # 4.3 MB of gradients: the rate, not HTB's burst (50 kB here), decides
BUCKET_MB = 1.0  # 5 buckets: small ones would ride on the burst their idle link saved up
MODES = ["ps-star", "ps", "sharded-ps", "allreduce"]
MATRIX = f"""
[matrix]
name = "trainer-fleet"
[trainer]
model = "{MODEL}"
batch = 2
seq_len = 16
ps_bucket_mb = {BUCKET_MB}
pipeline = 1
iterations = 6
warmup = 1
threads = 1
[axes]
profiles = ["default", "{int(RATE_BPS / 1e6)}mbit"]
dp_degrees = [2]
dp_modes = {json.dumps(MODES)}
[placement]  # rank 0 (the star's server) on h1: the rank map is honoured and recorded
by = "ranks"
ranks = ["h1", "h0"]
[probe]
seconds = 0.3
count = 10
"""


def busiest_egress_bytes(mode: str) -> float:
    """Bytes the busiest host must send in one sync of the model at D = 2."""
    gpt = CONFIGS[MODEL]
    tensors = [n * 4 for n in stage_tensor_sizes(gpt, split_layers(gpt.n_layer, 1))[0]]
    spans = bucket_spans(tensors, int(BUCKET_MB * 2**20))
    sizes = np.array([sum(tensors[span.start : span.stop]) for span in spans], dtype=float)
    if mode == "sharded-ps":
        owned_by_0 = sizes[::2].sum()  # bucket i is owned by replica i % 2
        return 2 * max(owned_by_0, sizes.sum() - owned_by_0)
    return sizes.sum() * (1 if mode == "allreduce" else 2)


def test_every_sync_grows_as_its_own_traffic_predicts(local_fleet, wanlab, tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX)
    out = tmp_path / "results"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert {c["status"] for c in cells} == {"ok"}
    assert {c["placement_rule"] for c in cells} == {"rank map"}
    assert all(c["placement"] == {"0": "h1", "1": "h0"} for c in cells)
    phases = {(c["params"]["profile"], c["params"]["dp_mode"]): c["summary"]["phases"]
              for c in cells}  # fmt: skip
    gradient_bytes = CONFIGS[MODEL].n_params() * 4
    one_way = gradient_bytes * 8 / RATE_BPS
    star_sync = phases["100mbit", "ps-star"]["ps_sync_s"]["mean"]
    assert phases["default", "ps-star"]["ps_sync_s"]["mean"] < 0.1 * one_way
    assert 0.8 * one_way <= star_sync <= 2 * one_way + 0.05, (star_sync, one_way)
    for mode in MODES:
        predicted = busiest_egress_bytes(mode) * 8 / RATE_BPS
        # the sync's own phase: a pipeline of one stage sends nothing else, and the iteration's
        # compute varies between cells on 2 cores (a CI run saw sharded-ps's iteration grow 1.9x).
        # The unshaped sync is not taken off: its transfer overlaps the shaped one's, not adds.
        sync = phases["100mbit", mode]["ps_sync_s"]["mean"]
        # HTB's burst lets part of each bucket through unshaped: a quarter at most here
        assert 0.75 * predicted <= sync <= 1.5 * predicted + 0.05, (mode, sync, predicted)

    report = wanlab("report", str(out), "-o", str(tmp_path / "report"), timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    table = (tmp_path / "report" / "report.md").read_text()
    assert all(mode in table for mode in MODES), table
    assert "rank map" in table and "h1; h0" in table
