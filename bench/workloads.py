"""What reading a user's job costs: the step-time parsers, and the job host around the job.

1. Parsing: each parser (trainer/steptimes.py) fed the real rank-0 output of the examples
   (tests/data/workloads: DeepSpeed 0.19.8 ZeRO-2, Lightning 2.6.6, the plain DDP loop, and the
   DDP output through a regex), the whole output `--repeats` times, best of 5; µs per line and
   per step, and per step as a share of the job's median step in that same output.
2. The job host: the DDP example (2 ranks on loopback, `--steps` steps) started bare and under
   a job host (trainer/jobhost.py: its own session, output through a pipe, logged and parsed),
   alternated `--pairs` times in one run; the ratio of the median steps.

Goals: parsing <= 0.1 % of the median step for every parser, and job host / bare <= 1.03.
Loopback only, no fleet, no lock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine_facts
from trainer.jobhost import BOOT, MARK
from trainer.steptimes import parser_for

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "workloads"
DDP = REPO / "examples" / "ddp_jsonl.py"
PARSERS = [
    ("deepspeed", "deepspeed-zero2-rank0.log", None),
    ("lightning", "lightning-rank0.log", None),
    ("jsonl", "ddp-rank0.log", None),
    ("regex", "ddp-rank0.log", r'"iteration_s": (?P<seconds>[\d.]+)'),
]
PARSE_GOAL = 0.001
HOST_GOAL = 1.03


def parse_cost(timing: str, name: str, pattern: str | None, repeats: int) -> dict:
    """Seconds per line and per step of one parser over one captured output."""
    lines = (DATA / name).read_text().splitlines()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            parser = parser_for(timing, pattern)
            steps = [s for line in lines if (s := parser.feed(line)) is not None]
        best = min(best, time.perf_counter() - started)
    per_line = best / (repeats * len(lines))
    per_step = best / (repeats * len(steps))
    median = statistics.median(s.iteration_s for s in steps)
    return {"parser": timing, "output": name, "lines": len(lines), "steps": len(steps),
            "us_per_line": per_line * 1e6, "us_per_step": per_step * 1e6,
            "median_step_s": median, "share": per_step / median}  # fmt: skip


def ddp_env(rank: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def steps_of(text: str) -> list[float]:
    parser = parser_for("jsonl")
    return [s.iteration_s for line in text.splitlines() if (s := parser.feed(line)) is not None]


def bare(steps: int, port: int, folder: Path) -> float:
    """The DDP job's median step, started directly, output to a file."""
    logs, ranks = [], []
    for rank in range(2):
        log = folder / f"bare{rank}.log"
        logs.append(log)
        with open(log, "w") as out:
            ranks.append(subprocess.Popen(
                [sys.executable, str(DDP), "--steps", str(steps)], stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, **ddp_env(rank, port)},
            ))  # fmt: skip
    for process in ranks:
        process.wait(timeout=300)
    return statistics.median(steps_of(logs[0].read_text())[2:])


def hosted(steps: int, port: int, folder: Path) -> float:
    """The DDP job's median step, started by a job host (rank 0's lines parsed there)."""
    host = subprocess.Popen(
        [sys.executable, "-c", BOOT, str(REPO), "serve", str(folder / "jobhost.pid")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    host.stdout.readline()
    specs = [{"rank": rank, "argv": [sys.executable, str(DDP), "--steps", str(steps)],
              "env": ddp_env(rank, port), "cwd": str(folder), "out": str(folder / f"r{rank}"),
              "timing": {"kind": "jsonl", "iterations": steps} if rank == 0 else None}
             for rank in range(2)]  # fmt: skip
    host.stdin.write(json.dumps({"run": {"processes": specs, "deadline_s": 300}}) + "\n")
    host.stdin.flush()
    exits = [json.loads(line[len(MARK) :])["exit"] for line in host.stdout
             if line.startswith(MARK) and '"exit"' in line]  # fmt: skip
    host.wait(timeout=60)
    timed = next(e for e in exits if e["rank"] == 0)["steps"][2:]
    return statistics.median(step["iteration_s"] for step in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--repeats", type=int, default=200, help="passes over each output")
    parser.add_argument("--pairs", type=int, default=5, help="bare/hosted runs alternated")
    parser.add_argument("--steps", type=int, default=60, help="steps of each DDP run")
    args = parser.parse_args()
    parsing = [parse_cost(timing, name, pattern, args.repeats) for timing, name, pattern in PARSERS]
    for row in parsing:
        print(f"{row['parser']:>10} on {row['output']:<26} {row['us_per_line']:6.2f} µs/line "
              f"{row['us_per_step']:7.2f} µs/step = {row['share']:.5%} of its median step "
              f"({row['median_step_s'] * 1000:.1f} ms)")  # fmt: skip
    ratios, pairs = [], []
    with tempfile.TemporaryDirectory(prefix="wanlab-bench-") as tmp:
        for index in range(args.pairs):
            port = 29700 + (os.getpid() + 2 * index) % 200
            folder = Path(tmp) / str(index)
            folder.mkdir()
            plain = bare(args.steps, port, folder)
            under = hosted(args.steps, port + 1, folder)
            pairs.append({"bare_s": plain, "job_host_s": under})
            ratios.append(under / plain)
            print(f"DDP 2 ranks, pair {index + 1}: bare {plain * 1000:.1f} ms, "
                  f"under a job host {under * 1000:.1f} ms ({under / plain:.3f})")  # fmt: skip
    ratio = statistics.median(ratios)
    worst_share = max(row["share"] for row in parsing)
    print(f"parsing at most {worst_share:.5%} of a step (goal <= {PARSE_GOAL:.1%}); job host / "
          f"bare {ratio:.3f} (median of {args.pairs}, goal <= {HOST_GOAL})")  # fmt: skip
    if args.json:
        print(json.dumps({
            "bench": "workloads",
            "goal": f"parsing <= {PARSE_GOAL:.1%} of the median step for every parser; job "
                    f"host / bare <= {HOST_GOAL}",
            "met": worst_share <= PARSE_GOAL and ratio <= HOST_GOAL,
            "parsing": parsing, "worst_share": worst_share, "job_host_ratio": ratio,
            "pairs": pairs, "machine": machine_facts(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
