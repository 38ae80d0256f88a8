"""The trainer across the local fleet's namespaces, gloo over the veths, under a bandwidth limit.

Two ranks on two hosts with a centralized parameter server (pipeline 1, dp_degree 2): every
iteration the non-server replica pushes its whole gradient through its shaped egress and the
server sends the average back through its own, so the PS sync time must grow to about
2 · (gradient bytes) / rate. The rate is enforced by the hosts' kernels (HTB).

Rank 0 is the server: its PS phase ends once the average is handed to its socket, so it holds
the push (one way); the iteration, which ends on a barrier, holds both ways.
"""

from __future__ import annotations

import json

from trainer.model import CONFIGS

RATE_BPS = 10e6
MATRIX = f"""
[matrix]
name = "trainer-fleet"
[trainer]
model = "tiny"
batch = 2
pipeline = 1
iterations = 6
warmup = 1
threads = 1
dp_modes = []
[axes]
profiles = ["default", "{int(RATE_BPS / 1e6)}mbit"]
dp_degrees = [2]
dp_modes = ["ps"]
[probe]
seconds = 0.3
count = 10
"""


def test_ps_sync_grows_as_the_bandwidth_limit_predicts(local_fleet, wanlab, tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace("dp_modes = []\n", ""))
    out = tmp_path / "results"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    unshaped, shaped = (json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines())
    assert shaped["placement"] == {"0": "h0", "1": "h1"}
    gradient_bytes = CONFIGS["tiny"].n_params() * 4
    one_way = gradient_bytes * 8 / RATE_BPS
    predicted = 2 * one_way  # push over h1's egress, the average back over h0's
    sync = {
        c["params"]["profile"]: c["summary"]["phases"]["ps_sync_s"]["mean"]
        for c in (unshaped, shaped)
    }
    total = {
        c["params"]["profile"]: c["summary"]["phases"]["total_s"]["mean"]
        for c in (unshaped, shaped)
    }
    assert sync["default"] < 0.2 * predicted, sync
    assert 0.8 * one_way <= sync["10mbit"] <= 1.5 * one_way, (sync, one_way)
    grew = total["10mbit"] - total["default"]
    assert 0.85 * predicted <= grew <= 1.5 * predicted + 0.05, (total, predicted)
