"""The job host on this machine (no SSH): it runs a cell's processes, parses the timing rank, and
leaves no process behind however the cell ends.

The job is `tests/jobs/misbehave.py`, a stand-in: a hang and a daemon escaping its session must
happen every time, which a real framework does only by chance.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import proctree
from trainer.jobhost import BOOT, MARK, MAX_LINE, _split_lines

REPO = Path(__file__).resolve().parents[1]
MISBEHAVE = str(REPO / "tests" / "jobs" / "misbehave.py")


def start_job_host(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    pid_file = tmp_path / "jobhost.pid"
    host = subprocess.Popen(
        [sys.executable, "-c", BOOT, str(REPO), "serve", str(pid_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    ready = json.loads(host.stdout.readline()[len(MARK) :])["ready"]
    return host, ready


def run_request(tmp_path: Path, mode: str, deadline_s: float = 60.0) -> dict:
    specs = [
        {"rank": rank, "argv": [sys.executable, MISBEHAVE, mode, "5"], "env": {"RANK": str(rank)},
         "cwd": str(tmp_path), "out": str(tmp_path / "out" / f"rank{rank}"),
         "timing": {"kind": "jsonl", "iterations": 5} if rank == 0 else None}
        for rank in range(2)
    ]  # fmt: skip
    return {"run": {"processes": specs, "deadline_s": deadline_s}}


def messages(host: subprocess.Popen) -> list[dict]:
    found = [json.loads(line[len(MARK) :]) for line in host.stdout if line.startswith(MARK)]
    host.wait(timeout=30)
    return found


def left_of(marker: str, pids: list[int]) -> list[int]:
    alive = [p for p in pids if os.path.exists(f"/proc/{p}") and proctree._alive(p)]
    return proctree.marked(marker) + alive


def test_a_whole_run_reports_each_exit_and_the_steps(tmp_path):
    host, ready = start_job_host(tmp_path)
    host.stdin.write(json.dumps(run_request(tmp_path, "ok")) + "\n")
    host.stdin.flush()
    said = messages(host)
    exits = {m["exit"]["rank"]: m["exit"] for m in said if "exit" in m}
    assert exits[0]["code"] == exits[1]["code"] == 0
    assert [s["iteration_s"] for s in exits[0]["steps"]] == [0.01] * 5
    assert not exits[0]["stopped"]
    assert "done" in said[-1]
    assert (tmp_path / "out" / "rank0" / "output.log").read_text().count("iteration_s") == 5
    assert not os.path.exists(tmp_path / "jobhost.pid")
    assert 1024 <= ready["port"] < 65536


@pytest.mark.parametrize("ending", ["stop", "eof", "deadline"])
def test_every_ending_kills_the_whole_tree(tmp_path, ending):
    """The hang leaves a child in a new session and a double-forked setsid daemon: a session
    or group kill would miss both."""
    host, ready = start_job_host(tmp_path)
    host.stdin.write(
        json.dumps(run_request(tmp_path, "hang", 2.0 if ending == "deadline" else 60)) + "\n"
    )
    host.stdin.flush()
    deadline = time.monotonic() + 20
    # rank 1's tree holds at most 4 processes at once: a sixth is rank 0's child, forked after
    # rank 0 printed its steps
    while len(proctree.marked(ready["marker"])) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = proctree.marked(ready["marker"])
    assert len(started) >= 6, "both ranks, their new-session children and daemons"
    if ending == "stop":
        host.stdin.write(json.dumps({"stop": True}) + "\n")
        host.stdin.flush()
    elif ending == "eof":
        host.stdin.close()
    said = messages(host)
    exits = {m["exit"]["rank"]: m["exit"] for m in said if "exit" in m}
    assert exits[0]["stopped"] and exits[0]["signal"] == "SIGKILL"
    assert len(exits[0]["steps"]) == 2
    assert said[-1]["done"]["killed"] >= 4
    assert left_of(ready["marker"], started) == []


def test_stop_ends_a_job_host_by_its_file_and_spares_a_recycled_pid(tmp_path):
    host, ready = start_job_host(tmp_path)
    host.stdin.write(json.dumps(run_request(tmp_path, "hang")) + "\n")
    host.stdin.flush()
    deadline = time.monotonic() + 20
    while len(proctree.marked(ready["marker"])) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = proctree.marked(ready["marker"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    recycled = tmp_path / "recycled.pid"
    recycled.write_text(json.dumps({"pid": bystander.pid, "marker": "none-such"}))
    stop = [
        sys.executable,
        "-c",
        BOOT,
        str(REPO),
        "stop",
        str(tmp_path / "jobhost.pid"),
        str(recycled),
    ]
    subprocess.run(stop, check=True, timeout=30)
    host.wait(timeout=10)
    time.sleep(0.2)
    assert left_of(ready["marker"], started) == []
    assert bystander.poll() is None, "a PID that is no job host is never killed"
    bystander.kill()
    bystander.wait()


def test_output_is_split_on_carriage_returns_and_long_lines_are_cut():
    lines, rest = _split_lines(b"b 40%\rbar 80%\n{", b"progress: a")
    assert lines == [b"progress: ab 40%", b"bar 80%"] and rest == b"{"
    lines, rest = _split_lines(b"y" * (70 * 1024), b"")
    assert [len(line) for line in lines] == [MAX_LINE] and len(rest) == 70 * 1024 - MAX_LINE
