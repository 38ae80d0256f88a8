"""Every data-parallel mode's sync time against its own bandwidth bound, on the local fleet.

D replicas of a one-stage pipeline (P = 1) on D hosts, a rate-only profile of β on every host's
egress (the bridge's is not shaped, so a host can take in several streams side by side), and a
model whose gradients of N bytes make the transfer dominate. Each mode's bound is what its own
traffic needs from the busiest egress at β:
- `ps`: bucket after bucket, a chunked reduce along the chain and a broadcast back:
  Σ over buckets of 2·(B + (D − 2)·min(c, B))/β;
- `sharded-ps`: all buckets at once, each host sending the buckets it does not own (reduce) or
  is not the tail of (broadcast): (max reduce load + max broadcast load)/β;
- `ps-star`: D − 1 pushes side by side, then D − 1 copies from the server: D·N/β;
- `allreduce` (a ring): 2·(D − 1)/D·N/β.
Goal: measured / bound ≤ 1.25 for every mode and D (the rest is gloo's per-message work and
the trainer's flattening on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from fleetbench import FleetBench
from machine import machine_facts

from experiments.costmodel.workload import GRAD_BYTES
from netem.profile import parse_profile
from trainer.config import DP_MODES
from trainer.dataparallel import bucket_spans
from trainer.model import CONFIGS
from trainer.partition import split_layers, stage_tensor_sizes

GOAL_RATIO = 1.25


def bucket_bytes(args: argparse.Namespace) -> np.ndarray:
    """The one stage's buckets, in bytes of gradient, as the trainer makes them."""
    gpt = CONFIGS[args.model]
    sizes = [n * GRAD_BYTES for n in stage_tensor_sizes(gpt, split_layers(gpt.n_layer, 1))[0]]
    spans = bucket_spans(sizes, int(args.bucket_mb * 2**20))
    return np.array([sum(sizes[span.start : span.stop]) for span in spans], dtype=float)


def bound_s(mode: str, buckets: np.ndarray, replicas: int, chunk: float, beta: float) -> float:
    """Seconds the mode's traffic needs from the busiest egress at `beta` bytes per second."""
    n, d = buckets.sum(), replicas
    if mode == "ps":
        return float(sum(2 * (b + (d - 2) * min(chunk, b)) for b in buckets) / beta)
    if mode == "sharded-ps":
        owners = np.arange(len(buckets)) % d
        reduce_load = max(buckets[owners != r].sum() for r in range(d))
        broadcast_load = max(buckets[(owners - 1) % d != r].sum() for r in range(d))
        return float((reduce_load + broadcast_load) / beta)
    if mode == "ps-star":
        return float(d * n / beta)
    return float(2 * (d - 1) / d * n / beta)


def run_flags(args: argparse.Namespace, mode: str, replicas: int) -> list[str]:
    """The trainer flags of one run: one stage, `replicas` pipelines, `mode`."""
    return [
        "--model", args.model, "--pipeline", "1", "--dp-degree", str(replicas), "--dp-mode", mode,
        "--ps-bucket-mb", str(args.bucket_mb), "--ps-chunk-kb", str(args.chunk_kb),
        "--batch", "1", "--micro-batch", "1", "--seq-len", str(args.seq_len),
        "--iterations", str(args.iterations), "--warmup", "1", "--threads", "1",
    ]  # fmt: skip


def measure(bench: FleetBench, mode: str, replicas: int, args, beta: float) -> dict:
    """The mode's sync time for `replicas` pipelines, median over repeats, and its bound."""
    buckets = bucket_bytes(args)
    bound = bound_s(mode, buckets, replicas, args.chunk_kb * 1024, beta)
    syncs = []
    for repeat in range(args.repeats):
        summary = bench.train(run_flags(args, mode, replicas), args.timeout, n_ranks=replicas)
        syncs.append(summary["phases"]["ps_sync_s"]["median"])
        print(f"  {mode} D={replicas} repeat {repeat}: sync {syncs[-1]:.3f} s", flush=True)
    sync = statistics.median(syncs)
    return {"dp_mode": mode, "dp_degree": replicas, "sync_s": sync, "runs_sync_s": syncs,
            "bound_s": bound, "ratio": sync / bound}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="100mbit", help="a rate-only profile")
    parser.add_argument("--dp-degree", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--modes", nargs="+", default=list(DP_MODES), choices=DP_MODES)
    parser.add_argument("--model", default="cpu-mini")
    parser.add_argument("--bucket-mb", type=float, default=0.0, help="0: one bucket per tensor")
    parser.add_argument("--chunk-kb", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print the goal JSON last")
    args = parser.parse_args()
    profile = parse_profile(args.profile, source="--profile")
    if profile.rate_bps is None or profile.delay_ms:
        parser.error("--profile must set a rate and no delay (this kernel has no netem)")
    beta = profile.rate_bps / 8

    with FleetBench(max(args.dp_degree)) as bench:
        bench.shape(args.profile)
        rows = [measure(bench, m, d, args, beta) for d in args.dp_degree for m in args.modes]
        failures = bench.failures
    buckets = bucket_bytes(args)
    print(
        f"model {args.model}: N = {buckets.sum():.0f} bytes of fp32 gradients in "
        f"{len(buckets)} buckets, chunks of {args.chunk_kb} KiB, β = {args.profile} on every "
        f"host's egress, P = 1, median over {args.repeats} repeats of rank 0's median sync"
    )
    print(f"{'mode':>11} {'D':>3} {'sync s':>8} {'bound s':>8} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['dp_mode']:>11} {r['dp_degree']:>3} {r['sync_s']:>8.3f} {r['bound_s']:>8.3f} "
            f"{r['ratio']:>6.3f}"
        )
    if args.json:
        report = {
            "bench": "ps",
            "goal": f"every mode's sync / its own bound ≤ {GOAL_RATIO} under {args.profile}",
            "met": all(r["ratio"] <= GOAL_RATIO for r in rows),
            "ran_on": machine_facts() | {"fleet": "local namespaces, one rank per host"},
            "model": args.model,
            "gradient_bytes": float(buckets.sum()),
            "buckets": len(buckets),
            "beta_bytes_per_s": beta,
            "profile": args.profile,
            "runs": rows,
            "failed_runs_retried": failures,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
