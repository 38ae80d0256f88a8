"""`wanlab deploy` on the local fleet: a fresh environment per host folder, reusing this
machine's torch; a matrix then runs with the hosts' own environments; a second deploy skips."""

from __future__ import annotations

import json
import shutil
import subprocess

from inventory.deploy import HOST_REQUIREMENTS
from inventory.loader import load_inventory
from inventory.ship import REPO_ROOT

MATRIX = """
[matrix]
name = "deployed"
[trainer]
model = "tiny"
batch = 2
pipeline = 2
iterations = 2
warmup = 1
[axes]
profiles = ["default"]
[probe]
seconds = 0
count = 3
"""


def test_deploy_installs_per_host_then_runs_a_matrix_then_skips(local_fleet, wanlab, tmp_path):
    envs = [local_fleet.workdir(host) / "env" for host in local_fleet.existing_hosts()]
    try:
        first = wanlab("deploy", "-i", "local", "--json", timeout=600)
        assert first.returncode == 0, first.stdout + first.stderr
        reports = json.loads(first.stdout)
        assert sorted(reports) == ["h0", "h1", "h2", "h3"]
        for name, report in reports.items():
            assert report["status"] == "installed", report
            assert any(item.startswith("wanlab-") for item in report["installed"]), report
            assert "torch" in report["reused"]  # this machine's torch, not a new one
            assert report["python"] == str(local_fleet.workdir(local_fleet.host(int(name[1:])))
                                           / "env" / "bin" / "python")  # fmt: skip
        for env in envs:  # each host's environment, read with its own python
            shown = subprocess.run([env / "bin" / "python", "-m", "pip", "show", "wanlab"],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
            assert f"Location: {env}" in shown
            assert (env / "pyvenv.cfg").read_text().count("include-system-site-packages = true")
        fleet = load_inventory(local_fleet.inventory_path)
        assert [host.python for host in fleet.hosts] == [
            str(env / "bin" / "python") for env in envs
        ]

        matrix = tmp_path / "m.toml"
        matrix.write_text(MATRIX)
        run = wanlab("run", str(matrix), "-o", str(tmp_path / "out"), "-i", "local", timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        cell = json.loads((tmp_path / "out" / "cells.jsonl").read_text().splitlines()[-1])
        assert cell["status"] == "ok"

        second = wanlab("deploy", "-i", "local", "--json", timeout=600)
        assert second.returncode == 0, second.stdout + second.stderr
        assert {r["status"] for r in json.loads(second.stdout).values()} == {"skipped"}
    finally:
        for env in envs:
            shutil.rmtree(env, ignore_errors=True)
        local_fleet.refresh_inventory()  # back to this machine's python for the other tests


def test_the_host_requirements_are_the_projects_own():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    for requirement in HOST_REQUIREMENTS:
        assert f'"{requirement}"' in text, requirement
