"""Bounded work of the inventory readers: small files that would cost unbounded time or memory
(a billion-host range, ranges that multiply, groups nested 70 deep, anchors that repeat groups,
a group that contains itself, 5,000 Host blocks, an Include loop, Includes 20 deep) are each
refused with one ConfigError. Each case reads its file as `wanlab inventory show --from SOURCE
FILE` does (`inventory.fromsource.read_source`) in a fresh process that imports only the
inventory package (the `wanlab` command's own start, which imports torch, is the same for any
file and is left out); printed: the read's seconds, the memory it allocated at its peak
(tracemalloc) and the process's peak resident set. Goal: every case refused within 2 s and
64 MiB allocated.

    python bench/inventory_limits.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_S = 2.0
GOAL_MIB = 64
CHILD = """
import json, sys, time, tracemalloc
from pathlib import Path
from inventory.errors import ConfigError
from inventory.fromsource import SourceOptions, read_source
tracemalloc.start()
started = time.monotonic()
try:
    read_source(sys.argv[1], Path(sys.argv[2]), SourceOptions())
    error = None
except ConfigError as refused:
    error = str(refused)
seconds = time.monotonic() - started
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": seconds, "allocated_mib": peak / 2**20, "error": error}))
"""


def cases(root: Path) -> list[tuple[str, str, Path]]:
    """(case, source, file) for every bounded-work case, written under `root`."""
    files = {
        "range-1e9.ini": "n[1:1000000000].example\n",
        "ranges-multiply.yml": "all:\n  hosts:\n    n[1:1000]-[1:1000]-[1:1000]:\n",
        "deep-groups.yml": "all:\n  children:\n" + "".join(
            " " * (4 + 4 * i) + f"g{i}:\n" + " " * (6 + 4 * i) + "children:\n" for i in range(70)),
        "anchors.yml": "\n".join(["a0: &a0 {hosts: {h.example: }}"] + [
            f"a{i}: &a{i} {{children: {{" + ", ".join(f"c{i}{j}: *a{i - 1}" for j in range(9))
            + "}}" for i in range(1, 9)]) + "\n",
        "self-child.ini": "[a]\nh.example\n[a:children]\na\n",
        "hosts-5000.config": "".join(
            f"Host h{i}\n  HostName 10.1.{i // 250}.{i % 250 + 1}\n" for i in range(5000)),
        "include-loop.config": f"Include {root}/include-loop.config\nHost a\n  HostName 10.0.0.1\n",
    }  # fmt: skip
    for level in range(20):
        files[f"deep{level}.config"] = f"Include {root}/deep{level + 1}.config\n"
    files["deep20.config"] = "Host a\n  HostName 10.0.0.1\n"
    for name, text in files.items():
        (root / name).write_text(text)
    found = []
    for name in [*list(files)[:7], "deep0.config"]:
        source = "ssh-config" if name.endswith(".config") else "ansible"
        found.append((name.rsplit(".", 1)[0], source, root / name))
    return found


def run_case(source: str, path: Path) -> dict:
    """Seconds, allocated and resident peaks, and the refusal of one read in its own process."""
    argv = [sys.executable, "-c", CHILD, source, str(path)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(process.pid, 0)
    answer = json.loads(process.stdout.read().strip().splitlines()[-1])
    return {
        "seconds": round(answer["seconds"], 3),
        "allocated_mib": round(answer["allocated_mib"], 1),
        "resident_peak_mib": round(usage.ru_maxrss / 1024, 1),
        "refusal": answer["error"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {name: run_case(source, path) for name, source, path in cases(Path(folder))}
    baseline = run_case("ansible", Path(__file__).parent.parent / "inventory/examples/gpus.yml")
    for name, result in [*results.items(), ("(gpus.yml read)", baseline)]:
        print(
            f"{name:16} {result['seconds']:6.3f} s {result['allocated_mib']:6.1f} MiB allocated "
            f"{result['resident_peak_mib']:6.1f} MiB resident  {result['refusal'] or ''}"
        )
    met = all(r["refusal"] and r["seconds"] <= GOAL_S and r["allocated_mib"] <= GOAL_MIB
              for r in results.values())  # fmt: skip
    if args.json:
        print(json.dumps({
            "goal": f"every case refused in one line within {GOAL_S} s and {GOAL_MIB} MiB",
            "met": met, "cases": results, "baseline_gpus_yml": baseline,
            "machine": {"kernel": platform.release(), "cpu": platform.processor() or
                        platform.machine(), "cores": os.cpu_count()},
        }))  # fmt: skip


if __name__ == "__main__":
    main()
