"""Users' own training jobs under a matrix, on the local fleet (real sshd, real shaping, real
DeepSpeed 0.19.8, Lightning 2.6.6 and torch.distributed processes): the example scripts in
examples/, unmodified, beside the built-in trainer; then jobs that hang, crash on one host or
print no timing, each failing only its cell with its reason, with nothing left running or shaped.

Rate-only profiles: this kernel has HTB but no netem. The shaped cell's slowdown is compared
with an estimate made without the jobs' own timers: the bytes each host sends per step, from
the model's size and each framework's collectives (DDP's ring all-reduce sends 2(N-1)/N of the
gradients per rank, DeepSpeed ZeRO-2 on gloo all-reduces them and all-gathers the updated
partitions, 3(N-1)/N), over the rate the cell's own probe measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import netem_tc
import pytest

if not all(importlib.util.find_spec(name) for name in ("deepspeed", "lightning")):
    pytest.skip("the workloads extra is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
JOBS = Path(__file__).resolve().parent / "jobs"
EXTENSIONS = Path.home() / ".cache" / "wanlab-tests" / "torch_extensions"
"""DeepSpeed's compiled op, kept on this machine across test sessions (the fleet's HOME is new
every session): a developer compiles it once, CI once per machine."""
GRADIENT_BYTES = 4 * (4 * (512 * 512 + 512))
"""The examples' MLP (--hidden 512 --layers 4): 1,050,624 fp32 parameters."""
ITERATIONS = 12
SHAPED = "100mbit"

RUN = """
[matrix]
name = "jobs"
[trainer]
model = "tiny"
batch = 32
pipeline = 1
iterations = 3
warmup = 1
threads = 1
timeout_s = 60
[axes]
profiles = ["default", "{shaped}"]
dp_degrees = [2]
micro_batches = [32]
dp_modes = ["allreduce"]
workloads = ["trainer", "ddp", "lightning", "deepspeed"]
[probe]
seconds = 0.5
count = 10
[timeouts]
cell_s = 300
[workloads.ddp]
command = ["{{python}}", "ddp_jsonl.py", "--steps", "{{iterations}}",
           "--micro-batch", "{{micro_batch}}"]
ship = ["ddp_jsonl.py"]
timing = "jsonl"
iterations = {iterations}
warmup = 2
batch = "{{micro_batch}}"
[workloads.lightning]
command = ["{{python}}", "lightning_train.py", "--steps", "{{iterations}}",
           "--micro-batch", "{{micro_batch}}"]
ship = ["lightning_train.py"]
timing = "lightning"
iterations = {iterations}
warmup = 2
[workloads.deepspeed]
command = ["{{python}}", "deepspeed_train.py", "--steps", "{{iterations}}",
           "--micro-batch", "{{micro_batch}}"]
ship = ["deepspeed_train.py"]
timing = "deepspeed"
iterations = {iterations}
warmup = 2
env = {{TORCH_EXTENSIONS_DIR = "{extensions}"}}
prepare = ["{{python}}", "-c", '''from deepspeed.accelerator import get_accelerator
get_accelerator().create_op_builder("ShareMemCommBuilder").load()''']
prepare_s = 600
"""

FAILURES = """
[matrix]
name = "failures"
[axes]
profiles = ["{shaped}"]
dp_degrees = [2]
workloads = ["hang", "crash", "silent", "short", "abortexit", "ddp"]
[probe]
seconds = 0.2
count = 5
[timeouts]
cell_s = 120
{tables}
[workloads.ddp]
command = ["{{python}}", "ddp_jsonl.py", "--steps", "{{iterations}}"]
ship = ["ddp_jsonl.py"]
timing = "jsonl"
iterations = 4
"""
MISBEHAVE = """
[workloads.{mode}]
command = ["{{python}}", "misbehave.py", "{mode}", "{{iterations}}"]
ship = ["misbehave.py"]
timing = "jsonl"
iterations = 5
cell_s = {cell_s}
"""


def wanlab(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The real `wanlab` command line (the session's fleet is named by the environment that
    conftest's `wanlab_env` sets)."""
    argv = [sys.executable, "-c", "from experiments.cli import main; main()", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def root_kinds(fleet) -> list[str]:
    return [netem_tc.qdiscs(h.netns, "eth0")[0]["kind"] for h in fleet.existing_hosts()]


def job_processes(fleet, names: tuple[str, ...]) -> list[str]:
    """Processes in the hosts' namespaces running a job, a job host or a framework's helper."""
    left = []
    for host in fleet.existing_hosts():
        pids = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if any(n.encode() in cmdline for n in names) or b"WANLAB_JOB=" in environ:
                left.append(f"{host.name}: {pid} {cmdline[:80]!r}")
    return left


def records(out: Path) -> dict[str, dict]:
    lines = (out / "cells.jsonl").read_text().splitlines()
    return {r["cell_id"]: r for r in map(json.loads, lines)}


def copy_jobs(folder: Path, *names: str) -> None:
    for name in names:
        source = EXAMPLES / name if (EXAMPLES / name).exists() else JOBS / name
        shutil.copy(source, folder / name)


@pytest.fixture(scope="module")
def run(local_fleet, tmp_path_factory):
    """One run of the examples beside the trainer, unshaped and shaped."""
    folder = tmp_path_factory.mktemp("jobs")
    copy_jobs(folder, "ddp_jsonl.py", "lightning_train.py", "deepspeed_train.py")
    EXTENSIONS.mkdir(parents=True, exist_ok=True)
    matrix = folder / "jobs.toml"
    matrix.write_text(RUN.format(shaped=SHAPED, iterations=ITERATIONS, extensions=EXTENSIONS))
    out = folder / "out"
    started = time.monotonic()
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=900)
    seconds = time.monotonic() - started
    report = wanlab("report", str(out), "--format", "md", timeout=120)
    after = {"qdiscs": root_kinds(local_fleet),
             "left": job_processes(local_fleet, ("ddp_jsonl", "lightning_train", "deepspeed_train",
                                                 "trainer.jobhost"))}  # fmt: skip
    return result, out, report, after, seconds


def test_every_cell_succeeds(run):
    result, out, _, _, seconds = run
    assert result.returncode == 0, result.stdout + result.stderr
    cells = records(out)
    assert list(cells) == [
        f"{profile}|dp2|mb32|{variant}|r0"
        for profile in ("default", SHAPED)
        for variant in (
            "gpipe|allreduce",
            "workload=ddp",
            "workload=lightning",
            "workload=deepspeed",
        )
    ]
    assert all(r["status"] == "ok" for r in cells.values()), {
        k: r["reason"] for k, r in cells.items() if r["status"] != "ok"
    }
    print(f"run took {seconds:.0f} s")
    for cell_id, record in cells.items():
        print(cell_id, f"{record['summary']['phases']['total_s']['mean'] * 1000:.1f} ms")


def test_each_rank_had_the_environment_a_job_needs(run):
    _, out, _, _, _ = run
    for record in records(out).values():
        if record["workload"] is None:
            continue
        env = record["workload"]["env"]
        assert env["OMP_NUM_THREADS"] == "1"  # 2 CPUs shared by 2 ranks on one kernel
        assert env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["LOCAL_RANK"] == "0" and env["WORLD_SIZE"] == "2" and env["RANK"] == "0"
        # Each rank exited 0 or, once every step was timed, was stopped by wanlab or died at
        # exit (gloo can abort a rank whose peer closed first: DeepSpeed's rank 1 did so once
        # in a CI run) -- and then the record's note names that rank.
        note = record["workload"]["exit_note"] or ""
        for process in record["workload"]["processes"]:
            assert (
                process["code"] == 0 or process["stopped"] or f"rank {process['rank']} " in note
            ), (process, note)
        versions = record["workload"]["versions"]
        assert all(v["torch"].startswith("2.13.0") for v in versions.values())
    ds = records(out)[f"{SHAPED}|dp2|mb32|workload=deepspeed|r0"]["workload"]
    assert all(v["deepspeed"] == "0.19.8" for v in ds["versions"].values())


def traffic_bytes(workload: str) -> float:
    """Bytes each of 2 ranks sends per step (see the module's docstring)."""
    share = 3 / 2 if workload == "deepspeed" else 1.0  # 3(N-1)/N or 2(N-1)/N with N = 2
    return share * GRADIENT_BYTES


@pytest.mark.parametrize("workload", ["ddp", "lightning", "deepspeed"])
def test_the_shaped_cell_is_slower_by_its_traffic_over_the_rate(run, workload):
    _, out, _, _, _ = run
    cells = records(out)
    base = cells[f"default|dp2|mb32|workload={workload}|r0"]["summary"]
    shaped = cells[f"{SHAPED}|dp2|mb32|workload={workload}|r0"]
    delta = shaped["summary"]["phases"]["total_s"]["median"] - base["phases"]["total_s"]["median"]
    rate = statistics.median(
        p["throughput_bps"] for p in shaped["network"]["probe"] if p.get("throughput_bps")
    )
    predicted = traffic_bytes(workload) * 8 / rate
    print(f"{workload}: slower by {delta:.3f} s, traffic over the probed rate {predicted:.3f} s")
    assert 0.75 <= delta / predicted <= 1.35


def test_step_timings_agree_with_their_arrival_on_the_host(run):
    """The parsers against the wall clock: in a shaped cell the gap between step lines as they
    arrive is the step's own time."""
    _, out, _, _, _ = run
    for workload in ("ddp", "lightning", "deepspeed"):
        summary = records(out)[f"{SHAPED}|dp2|mb32|workload={workload}|r0"]["summary"]
        arrivals = summary["arrivals_s"][2:]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert statistics.median(gaps) == pytest.approx(
            statistics.median(summary["iterations_s"]), rel=0.15
        ), workload


def test_deepspeed_reports_its_phases_and_the_others_do_not(run):
    _, out, report, _, _ = run
    cells = records(out)
    ds = cells[f"{SHAPED}|dp2|mb32|workload=deepspeed|r0"]["summary"]
    assert set(ds["phases_measured"]) >= {"forward_s", "backward_s", "ps_sync_s", "optimizer_s"}
    assert ds["phases"]["ps_sync_s"]["mean"] > ds["phases"]["forward_s"]["mean"]
    assert cells[f"{SHAPED}|dp2|mb32|workload=ddp|r0"]["summary"]["phases_measured"] == []
    assert report.returncode == 0, report.stderr
    text = (out / "report" / "report.md").read_text()
    for label in ("DP 2 · gpipe · allreduce", "DP 2 · ddp", "DP 2 · lightning", "DP 2 · deepspeed",
                  "not measured"):  # fmt: skip
        assert label in text, label


def test_predict_says_workloads_are_not_modelled(run):
    _, out, _, _, _ = run
    result = wanlab("predict", str(out.parent / "jobs.toml"), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r.get("why") for r in rows if r.get("modelled") is False] == [
        f"workload {name}: not modelled" for name in ("ddp", "lightning", "deepspeed") * 2
    ]
    assert all("predicted_iteration_s" in r for r in rows if r["params"]["workload"] == "trainer")


def test_nothing_is_left_running_or_shaped(run):
    _, _, _, after, _ = run
    assert after["qdiscs"] == ["noqueue"] * 4
    assert after["left"] == []


@pytest.fixture(scope="module")
def failures(local_fleet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("failures")
    copy_jobs(folder, "ddp_jsonl.py", "misbehave.py")
    tables = "".join(
        MISBEHAVE.format(mode=mode, cell_s=6 if mode == "hang" else 60)
        for mode in ("hang", "crash", "silent", "short", "abortexit")
    )
    matrix = folder / "failures.toml"
    matrix.write_text(FAILURES.format(shaped=SHAPED, tables=tables))
    out = folder / "out"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=600)
    names = ("misbehave", "ddp_jsonl", "trainer.jobhost")
    after = {"qdiscs": root_kinds(local_fleet), "left": job_processes(local_fleet, names)}
    return result, out, after


def test_each_misbehaving_job_fails_only_its_cell_with_the_reason(failures):
    result, out, after = failures
    assert result.returncode == 1, result.stdout + result.stderr
    cells = {cell_id.split("=")[1].split("|")[0]: r for cell_id, r in records(out).items()}
    reason = {name: r["reason"] for name, r in cells.items()}
    assert reason["hang"].startswith("timed out after 6 s: rank 0 printed 2 of 5 step timings")
    assert reason["crash"].startswith("rank 1 on h1 exited with 3: boom")
    assert cells["crash"]["timing"]["train_s"] < 30  # its peer was stopped, not waited for
    assert reason["silent"].startswith("printed no timing: no line of rank 0 matched the jsonl")
    assert reason["short"] == "rank 0 printed 3 step timings, expected 5 (iterations)"
    assert cells["abortexit"]["status"] == "ok"
    assert "SIGABRT after every step was printed" in cells["abortexit"]["workload"]["exit_note"]
    assert cells["ddp"]["status"] == "ok"  # the hosts are clean and usable after them
    assert cells["crash"]["workload"]["processes"][1]["tail"] == ["boom"]
    assert after["qdiscs"] == ["noqueue"] * 4
    assert after["left"] == []


def test_a_controller_killed_mid_cell_leaves_no_job_running(local_fleet, tmp_path):
    """SIGKILL leaves no clean-up to run on the controller: each job host sees its SSH session
    end and kills its tree, and the hosts' agents revert the shaping when the lease runs out."""
    copy_jobs(tmp_path, "misbehave.py")
    tables = MISBEHAVE.format(mode="hang", cell_s=120)
    text = FAILURES.format(shaped=SHAPED, tables=tables)
    text = text[: text.index("[workloads.ddp]")]
    text = text.replace('["hang", "crash", "silent", "short", "abortexit", "ddp"]', '["hang"]')
    matrix = tmp_path / "dead.toml"
    matrix.write_text(text.replace("cell_s = 120\n", "cell_s = 120\nlease_s = 10\n", 1))
    argv = [sys.executable, "-c", "from experiments.cli import main; main()", "run", str(matrix),
            "-o", str(tmp_path / "out"), "-i", "local"]  # fmt: skip
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(job_processes(local_fleet, ("misbehave",))) < 4:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        run.kill()
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 15
    while job_processes(local_fleet, ("misbehave", "trainer.jobhost")):
        assert time.monotonic() < deadline, job_processes(local_fleet, ("misbehave",))
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while root_kinds(local_fleet) != ["noqueue"] * 4:
        assert time.monotonic() < deadline, root_kinds(local_fleet)
        time.sleep(0.2)
