"""The matrix runner end to end on the local fleet (real sshd, real shaping, real trainer ranks).

Rate-only profiles: this kernel has HTB but no netem (the delay node covers delay elsewhere).
What the kernel holds after a run is read with `tc`; the collected timings are compared with
the trainer's own per-iteration file on the host.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import netem_tc
import pytest
import tomli_w

from experiments.runner import usable_congestion_controls
from netem.tcp import PRESETS
from trainer.config import TrainerConfig
from trainer.data import TokenSource
from trainer.model import GPT

MATRIX = """
[matrix]
name = "{name}"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = {iterations}
warmup = 1
threads = 1
timeout_s = 10
[axes]
profiles = {profiles}
dp_degrees = {dp}
[probe]
seconds = 0.3
count = 10
[timeouts]
cell_s = 120
"""


def write_matrix(tmp_path: Path, name: str, profiles, dp, iterations: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        MATRIX.format(name=name, profiles=json.dumps(profiles), dp=dp, iterations=iterations)
    )
    return path


def start_run(matrix: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-c",
        "from experiments.cli import main; main()",
        "run",
        str(matrix),
        "-o",
        str(out),
        "-i",
        "local",
        *extra,
    ]
    # Ctrl-C as a terminal delivers it: a test session started in the background inherits an
    # ignored SIGINT, and Python then never turns SIGINT into KeyboardInterrupt.
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def records(out: Path) -> list[dict]:
    path = out / "cells.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def root_kinds(fleet) -> list[str]:
    return [netem_tc.qdiscs(h.netns, "eth0")[0]["kind"] for h in fleet.existing_hosts()]


def workers_left(fleet) -> list[int]:
    """Processes in the hosts' namespaces other than their sshd and its sessions."""
    left = []
    for host in fleet.existing_hosts():
        pids = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"trainer" in cmdline:
                left.append(int(pid))
    return left


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cuda_cells_on_hosts_without_gpus_are_refused_before_anything_is_shaped(
    local_fleet, wanlab, tmp_path
):
    matrix = write_matrix(tmp_path, "cuda", ["200mbit"], [1], iterations=2)
    matrix.write_text(matrix.read_text().replace("[trainer]\n", '[trainer]\ndevice = "cuda"\n'))
    out = tmp_path / "results"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.device" in lines[0] and "h0 has 0 for 1" in lines[0], lines
    assert not (out / "cells.jsonl").exists()
    assert "htb" not in root_kinds(local_fleet)  # the kernel's own view: nothing shaped


def test_two_cell_matrix_end_to_end(local_fleet, wanlab, tmp_path):
    matrix = write_matrix(tmp_path, "two", ["default", "200mbit"], [1], iterations=4)
    out = tmp_path / "results"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    cells = records(out)
    assert [c["cell_id"] for c in cells] == [
        "default|dp1|mb1|gpipe|ps|r0",
        "200mbit|dp1|mb1|gpipe|ps|r0",
    ]
    assert all(c["status"] == "ok" for c in cells)
    # not a terminal here: one line per finished cell is what the user sees
    said = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split(" ok: ")[0] for line in said] == [
        "[1/2] default|dp1|mb1|gpipe|ps|r0",
        "[2/2] 200mbit|dp1|mb1|gpipe|ps|r0",
    ], result.stdout
    shaped = cells[1]
    assert {a["profile"] for a in shaped["network"]["applied"].values()} == {"200mbit"}
    assert 150e6 < shaped["network"]["probe"][0]["throughput_bps"] <= 205e6
    # the receive share belongs to the hosts' kernel: only the unshaped cell measures it
    assert 0 < cells[0]["network"]["probe"][0]["receive_share"] <= 1
    assert "receive_share" not in shaped["network"]["probe"][0]
    assert shaped["placement"] == {"0": "h0", "1": "h1"}
    # The stored timings are rank 0's own: compare with the trainer's file on the host.
    rank0 = local_fleet.workdir(local_fleet.host(0)) / "cells"
    files = sorted(rank0.glob("200mbit*/rank0/iterations.jsonl"))
    assert len(files) == 1
    totals = [json.loads(line)["total_s"] for line in files[0].read_text().splitlines()]
    assert len(totals) == 3
    assert shaped["summary"]["phases"]["total_s"]["mean"] == pytest.approx(statistics.fmean(totals))
    assert (out / "cells.parquet").exists() and (out / "matrix.toml").exists()
    assert root_kinds(local_fleet) == ["noqueue"] * 4  # every qdisc reset
    assert workers_left(local_fleet) == []
    # No secret reaches an output: no line of the private key in what the run printed, wrote
    # into its results folder, or left on the hosts; the host-key policy is recorded.
    secret = [line for line in local_fleet.client_key.read_text().splitlines() if "---" not in line]
    outputs = [result.stdout, result.stderr]
    for folder in (out, local_fleet.directory / "work"):
        outputs += [
            p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file()
        ]
    assert not any(line in text for line in secret for text in outputs)
    [run_info] = json.loads((out / "run.json").read_text())
    assert run_info["strict_host_keys"] is True


def test_interrupt_resets_hosts_then_resume_redoes_nothing(local_fleet, tmp_path):
    matrix = write_matrix(
        tmp_path, "three", ["default", "200mbit", "100mbit"], [1, 2], iterations=30
    )
    out = tmp_path / "results"
    run = start_run(matrix, out)
    try:
        wait_for(lambda: len(records(out)) >= 2, 240, "two finished cells")
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, output
    done_before = [c["cell_id"] for c in records(out)]
    assert root_kinds(local_fleet) == ["noqueue"] * 4
    assert workers_left(local_fleet) == []
    resumed = start_run(matrix, out, "--resume")
    output, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, output
    ids = [c["cell_id"] for c in records(out)]
    assert ids[: len(done_before)] == done_before
    assert sorted(ids) == sorted(set(ids))  # nothing finished was run again
    assert len(ids) == 6 and all(c["status"] == "ok" for c in records(out))
    assert workers_left(local_fleet) == []


def test_host_killed_mid_cell_fails_that_cell_only(local_fleet, tmp_path):
    matrix = write_matrix(tmp_path, "kill", ["300mbit"], [2, 1], iterations=300)
    out = tmp_path / "results"
    pid_file = local_fleet.workdir(local_fleet.host(3)) / "trainer-worker-h3.pid"
    pid_file.unlink(missing_ok=True)
    run = start_run(matrix, out)
    try:
        cells = local_fleet.workdir(local_fleet.host(3)) / "cells"

        def rank3_training() -> bool:
            logs = list(cells.glob("300mbit_dp2*/rank3/rank-3.jsonl"))
            return bool(logs) and logs[0].read_text().count("\n") >= 2

        wait_for(rank3_training, 240, "rank 3 of the first cell training")
        victim = int(pid_file.read_text())
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        output, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output
    assert len(records(out)) == 2, output
    first, second = records(out)
    assert first["params"]["dp_degree"] == 2 and first["status"] == "failed"
    assert "h3" in first["reason"], first["reason"]
    assert second["params"]["dp_degree"] == 1 and second["status"] == "ok"
    assert root_kinds(local_fleet) == ["noqueue"] * 4
    assert workers_left(local_fleet) == []


def test_a_cell_whose_network_changed_mid_cell_fails_and_keeps_its_times(local_fleet, tmp_path):
    """A host whose qdiscs are no longer the applied ones when the cell ends (here removed by
    `tc` while the ranks train; a lapsed lease looks the same) fails the cell with that
    reason: its times were not measured on the profile. The summary is kept, and the hosts are
    reset as after any cell."""
    matrix = write_matrix(tmp_path, "changed", ["250mbit"], [2], iterations=150)
    out = tmp_path / "results"
    cells = local_fleet.workdir(local_fleet.host(3)) / "cells"
    run = start_run(matrix, out)
    try:

        def training() -> bool:
            logs = list(cells.glob("250mbit_dp2*/rank3/rank-3.jsonl"))
            return bool(logs) and logs[0].read_text().count("\n") >= 2

        wait_for(training, 240, "the cell's ranks training")
        h1 = local_fleet.host(1).netns
        subprocess.run(["ip", "netns", "exec", h1, "tc", "qdisc", "del", "dev", "eth0", "root"],
                       check=True)  # fmt: skip
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output
    (record,) = records(out)
    assert record["status"] == "failed"
    assert "no longer as applied on h1" in record["reason"], record["reason"]
    assert record["summary"]["timed_iterations"] > 0  # nothing measured is lost
    assert root_kinds(local_fleet) == ["noqueue"] * 4


def test_controller_killed_mid_cell_hosts_revert_within_the_lease(local_fleet, tmp_path):
    """SIGKILL leaves no clean-up to run: the hosts' agents must revert by themselves when the
    heartbeat stops (lease 10 s here, the default is 30 s), and the ranks must end with their
    SSH sessions; `--resume` then finishes the matrix."""
    text = MATRIX.format(name="dead", profiles='["250mbit"]', dp=[2], iterations=30)
    matrix = tmp_path / "dead.toml"
    long_cell = text.replace("iterations = 30", "iterations = 100000")
    matrix.write_text(long_cell.replace("cell_s = 120", "cell_s = 120\nlease_s = 10"))
    out = tmp_path / "results"
    cells = local_fleet.workdir(local_fleet.host(3)) / "cells"
    run = start_run(matrix, out)
    try:

        def training() -> bool:
            logs = list(cells.glob("250mbit_dp2*/rank3/rank-3.jsonl"))
            return bool(logs) and logs[0].read_text().count("\n") >= 2

        wait_for(training, 240, "the cell's ranks training")
        time.sleep(12)  # past the first lease: the heartbeat must have kept the hosts shaped
        assert run.poll() is None and root_kinds(local_fleet) == ["htb"] * 4
        run.kill()
        killed = time.monotonic()
        run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    wait_for(lambda: root_kinds(local_fleet) == ["noqueue"] * 4, 30, "every host reverted")
    reverted_s = time.monotonic() - killed
    print(f"hosts reverted {reverted_s:.1f} s after the controller was killed (lease 10 s)")
    assert reverted_s <= 10 + 5
    wait_for(lambda: workers_left(local_fleet) == [], 30, "no trainer process left")
    assert records(out) == []
    matrix.write_text(text)  # the same cell, fewer iterations
    resumed = start_run(matrix, out, "--resume")
    output, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, output
    assert [c["status"] for c in records(out)] == ["ok"]
    assert root_kinds(local_fleet) == ["noqueue"] * 4


def test_host_unplugged_mid_cell_fails_that_cell_and_the_matrix_goes_on(local_fleet, tmp_path):
    """h3's link goes down while its cell trains: the cell fails with a reason within its
    timeout, the next cell (which does not need h3) runs, and once h3 is back its own agent has
    put it back (its lease ran out: nobody could renew it)."""
    text = MATRIX.format(name="unplug", profiles='["150mbit"]', dp=[2, 1], iterations=300)
    text = text.replace("cell_s = 120", "cell_s = 40\napply_s = 10\nlease_s = 10")
    matrix = tmp_path / "unplug.toml"
    matrix.write_text(text)
    out = tmp_path / "results"
    cells = local_fleet.workdir(local_fleet.host(3)) / "cells"
    h3 = local_fleet.host(3).netns
    run = start_run(matrix, out)
    try:

        def training() -> bool:
            logs = list(cells.glob("150mbit_dp2*/rank3/rank-3.jsonl"))
            return bool(logs) and logs[0].read_text().count("\n") >= 2

        wait_for(training, 240, "rank 3 of the first cell training")
        subprocess.run(["ip", "-n", h3, "link", "set", "eth0", "down"], check=True)
        wait_for(lambda: len(records(out)) >= 1, 200, "the first cell's record")
        subprocess.run(["ip", "-n", h3, "link", "set", "eth0", "up"], check=True)
        output, _ = run.communicate(timeout=300)
    finally:
        subprocess.run(["ip", "-n", h3, "link", "set", "eth0", "up"], check=False)
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output
    first, second = records(out)
    assert first["status"] == "failed" and first["reason"], first
    assert first["timing"]["cell_s"] < 40 + 30
    assert second["params"]["dp_degree"] == 1 and second["status"] == "ok", second
    wait_for(lambda: workers_left(local_fleet) == [], 60, "no trainer process left")
    wait_for(lambda: root_kinds(local_fleet) == ["noqueue"] * 4, 40, "every host put back")


def host_tcp(fleet) -> dict[str, str]:
    """Each host's TCP sysctls and routes, read inside its namespace."""
    names = ["net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
             "net.ipv4.tcp_slow_start_after_idle"]  # fmt: skip
    read = {}
    for host in fleet.existing_hosts():
        argv = ["ip", "netns", "exec", host.netns, "sysctl", "-n", *names]
        sysctls = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        routes = subprocess.run(["ip", "-n", host.netns, "route"], capture_output=True, text=True)
        read[host.name] = sysctls + routes.stdout
    return read


def test_a_congestion_control_no_host_can_choose_is_refused_before_any_host_is_touched(
    local_fleet, wanlab, tmp_path
):
    matrix = write_matrix(tmp_path, "cc", ["200mbit"], [1], iterations=3)
    odd = 'tcp = ["odd"]\n[tcp.odd]\ncongestion_control = "nosuchcc"\n[probe]'
    matrix.write_text(matrix.read_text().replace("[probe]", odd))
    before = host_tcp(local_fleet), root_kinds(local_fleet)
    result = wanlab("run", str(matrix), "-o", str(tmp_path / "out"), "-i", "local", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert str(matrix) in line and "tcp.odd.congestion_control" in line, line
    assert "nosuchcc" in line and "h0 has " in line and "h1 has " in line, line
    assert (host_tcp(local_fleet), root_kinds(local_fleet)) == before
    assert not (tmp_path / "out" / "cells.jsonl").exists()


def test_usable_congestion_controls_follow_the_namespace():
    """The kernel lets a namespace other than the machine's choose only the allowed ones."""
    facts = {
        "allowed_congestion_control": ["reno", "cubic"],
        "available_congestion_control": ["reno", "cubic", "bbr"],
        "loadable_congestion_control": ["htcp"],
    }
    assert usable_congestion_controls(facts | {"machines_namespace": False}) == {"reno", "cubic"}
    assert usable_congestion_controls(facts | {"machines_namespace": True}) == {
        "reno", "cubic", "bbr", "htcp"
    }  # fmt: skip
    assert usable_congestion_controls({"congestion_control": "cubic"}) is None  # older facts


def test_tcp_axis_sets_records_and_restores_the_hosts_tcp(local_fleet, wanlab, tmp_path):
    matrix = write_matrix(tmp_path, "tcp", ["200mbit"], [1], iterations=3)
    matrix.write_text(matrix.read_text().replace("[probe]", 'tcp = ["host", "tuned"]\n[probe]'))
    out = tmp_path / "results"
    before = host_tcp(local_fleet)
    result = wanlab("run", str(matrix), "-o", str(out), "-i", "local", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    own, tuned = records(out)
    assert [own["cell_id"], tuned["cell_id"]] == [
        "200mbit|dp1|mb1|gpipe|ps|r0",
        "200mbit|tcp=tuned|dp1|mb1|gpipe|ps|r0",
    ]
    assert (own["params"]["tcp"], tuned["params"]["tcp"]) == ("host", "tuned")
    assert own["network"]["tcp_setting"] is None
    assert tuned["network"]["tcp_setting"]["rmem"] == list(PRESETS["tuned"].rmem)
    assert set(own["network"]["tcp"]) == set(tuned["network"]["tcp"]) == {"h0", "h1"}
    for settings in tuned["network"]["tcp"].values():
        assert settings == PRESETS["tuned"].model_dump(mode="json")
    for name, settings in own["network"]["tcp"].items():
        assert "\t".join(map(str, settings["rmem"])) in before[name]
    assert host_tcp(local_fleet) == before  # put back after the cell
    [run_info] = json.loads((out / "run.json").read_text())
    assert all("congestion_control" in facts["tcp"] for facts in run_info["hosts"].values())
    report = wanlab("report", str(out), "-o", str(tmp_path / "report"), "--format", "md")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "TCP tuned" in (tmp_path / "report" / "report.md").read_text()


LAYOUT_MATRIX = """
[matrix]
name = "layouts"
[trainer]
model = "tiny"
batch = 4
iterations = 3
warmup = 1
threads = 1
timeout_s = 20
seed = 5
[axes]
profiles = ["200mbit"]
dp_degrees = [1]
dp_modes = ["ps"]
layouts = ["tp1-pp2", "tp2-pp2"]
dtypes = ["fp32", "fp16"]
[probe]
seconds = 0.2
count = 5
[timeouts]
cell_s = 120
"""


def test_layouts_share_hosts_by_slots_and_a_cell_the_device_cannot_run_is_recorded_failed(
    local_fleet, wanlab, tmp_path
):
    """Two slots per host: a tensor group of 2 runs on one host's two workers. Both layouts
    train the same model on the same data, so their losses agree; fp16 on a CPU is refused by
    the ranks, recorded with its reason, and the matrix goes on."""
    inventory = tomllib.loads(local_fleet.inventory_path.read_text())
    for host in inventory["hosts"]:
        host["slots"] = 2
    slotted = tmp_path / "slots.toml"
    slotted.write_text(tomli_w.dumps(inventory))
    matrix = tmp_path / "layouts.toml"
    matrix.write_text(LAYOUT_MATRIX)
    out = tmp_path / "results"
    result = wanlab("run", str(matrix), "-o", str(out), "-i", str(slotted), timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr  # some cells failed
    assert "4 cell(s) run, 2 failed" in result.stdout
    cells = {c["cell_id"]: c for c in records(out)}
    plain = cells["200mbit|dp1|mb1|gpipe|ps|tp1-pp2|fp32|r0"]
    split = cells["200mbit|dp1|mb1|gpipe|ps|tp2-pp2|fp32|r0"]
    assert plain["status"] == split["status"] == "ok"
    assert plain["placement"] == {"0": "h0", "1": "h0"}
    assert split["placement"] == {"0": "h0", "1": "h0", "2": "h1", "3": "h1"}
    assert split["summary"]["world_size"] == 4
    losses = split["summary"]["losses"]
    assert losses == pytest.approx(plain["summary"]["losses"], rel=1e-4)
    # the first iteration's loss is the unpartitioned model's on the same batch (before a step)
    config = TrainerConfig(**split["trainer"])
    tokens, targets = TokenSource("synthetic", config.gpt.vocab_size, config.seq, 5).batch(0, 0, 4)
    _, expected = GPT(config.gpt, seed=5)(tokens, targets)
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    for layout in ("tp1-pp2", "tp2-pp2"):
        failed = cells[f"200mbit|dp1|mb1|gpipe|ps|{layout}|fp16|r0"]
        assert failed["status"] == "failed" and "fp16 needs a CUDA device" in failed["reason"]
    report = wanlab("report", str(out), "-o", str(tmp_path / "report"), "--format", "md")
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "tp2-pp2 · fp32" in text and "tp1-pp2 · fp16" in text
    assert root_kinds(local_fleet) == ["noqueue"] * 4
    assert workers_left(local_fleet) == []
