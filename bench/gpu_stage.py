"""GPT-3 XL's pipeline stages on this machine's GPU: forward and backward per micro-batch, and
the FLOP rate they reach, counted as the cost model counts (recompute's extra forward included),
so the middle stage's rate is what `wanlab predict --flops` takes for a fleet of such GPUs.

The reference experiment's stages: 24 layers, d_model 2048, 16 heads, seq 2048, micro-batch 1,
two layers per host on 12 hosts, activation recompute. The first, a middle and the last stage
are timed in fp32 and under bf16 autocast with CUDA events (median of the timed repeats, after
warm-up). Goal: on the GPU the fp32 forward and every gradient of a small stage equal the CPU's
(relative 1e-4), so the times are those of the computation the trainer runs.

    python bench/gpu_stage.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch

from experiments.costmodel.workload import make_workload
from trainer.model import CONFIGS
from trainer.partition import Stage

N_STAGES, MICRO = 12, 1
GOAL = "on the GPU the fp32 forward and gradients of a stage equal the CPU's (relative 1e-4)"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def stage_inputs(stage, cfg, device):
    """Tokens or activations in (a full sequence), and targets on the last stage."""
    gen = torch.Generator().manual_seed(0)
    seq = cfg.block_size
    if stage.is_first:
        x = torch.randint(cfg.vocab_size, (MICRO, seq), generator=gen)
    else:
        x = torch.randn(MICRO, seq, cfg.n_embd, generator=gen)
    targets = torch.randint(cfg.vocab_size, (MICRO, seq), generator=gen)
    x = x.to(device).detach().requires_grad_(not stage.is_first)
    return x, targets.to(device)


def forward_backward(stage, x, targets):
    """One micro-batch: the stage's forward, then its backward from a fixed upstream gradient."""
    y = stage(x, targets) if stage.is_last else stage(x)
    if stage.is_last:
        y.backward()
    else:
        y.backward(torch.ones_like(y) / y.numel())
    return y


def equivalence() -> float:
    """Largest relative difference between GPU and CPU fp32 (output and gradients)."""
    cfg = CONFIGS["cpu-mini"]
    worst = 0.0
    for index in range(2):
        results = []
        for device in ("cpu", "cuda"):
            stage = Stage(cfg, index, 2, seed=3).to(device)
            x, targets = stage_inputs(stage, cfg, device)
            y = forward_backward(stage, x, targets)
            results.append([y.detach()] + [p.grad for p in stage.parameters()])
        for cpu, gpu in zip(*results, strict=True):
            diff = (gpu.cpu().double() - cpu.double()).abs().max()
            worst = max(worst, float(diff / cpu.double().abs().max().clamp_min(1e-12)))
    return worst


def time_stage(index: int, dtype: str, repeats: int) -> dict:
    """Median forward and backward milliseconds of one micro-batch through stage `index`."""
    cfg = CONFIGS["gpt3-xl"]
    stage = Stage(cfg, index, N_STAGES, seed=0, recompute=True).cuda()
    x, targets = stage_inputs(stage, cfg, "cuda")
    autocast = (
        torch.autocast("cuda", dtype=DTYPES[dtype]) if dtype != "fp32" else contextlib.nullcontext()
    )
    fwd, bwd = [], []
    for repeat in range(repeats + 2):
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        marks[0].record()
        with autocast:
            y = stage(x, targets) if stage.is_last else stage(x)
        marks[1].record()
        grad = None if stage.is_last else torch.ones_like(y) / y.numel()
        y.backward(grad)
        marks[2].record()
        torch.cuda.synchronize()
        if repeat >= 2:
            fwd.append(marks[0].elapsed_time(marks[1]))
            bwd.append(marks[1].elapsed_time(marks[2]))
    work = make_workload(cfg, pipeline=N_STAGES, dp_degree=1, batch=MICRO, micro_batch=MICRO,
                         seq=cfg.block_size, recompute=True)  # fmt: skip
    flops = work.forward_flops[index] + work.backward_flops[index]
    total_ms = statistics.median(fwd) + statistics.median(bwd)
    del stage, x, y
    torch.cuda.empty_cache()
    return {
        "stage": index,
        "dtype": dtype,
        "forward_ms": round(statistics.median(fwd), 3),
        "backward_ms": round(statistics.median(bwd), 3),
        "tflops_per_s": round(flops / (total_ms / 1000) / 1e12, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        if args.json:
            print(json.dumps({"bench": "gpu_stage", "goal": GOAL, "met": None,
                              "reason": "no CUDA device"}))  # fmt: skip
        return 0
    worst = equivalence()
    print(f"{torch.cuda.get_device_name(0)}: GPU vs CPU fp32, largest relative difference "
          f"{worst:.2e} (goal <= 1e-4)")  # fmt: skip
    rows = [time_stage(i, d, args.repeats) for d in DTYPES for i in (0, N_STAGES // 2, 11)]
    for row in rows:
        print(f"stage {row['stage']:>2} {row['dtype']}: forward {row['forward_ms']:8.2f} ms, "
              f"backward (with recompute) {row['backward_ms']:8.2f} ms, "
              f"{row['tflops_per_s']:7.2f} TFLOP/s")  # fmt: skip
    if args.json:
        summary = {
            "bench": "gpu_stage",
            "goal": GOAL,
            "met": worst <= 1e-4,
            "largest_relative_difference": worst,
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "stages": rows,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
