"""The code zips shipped to hosts are complete: every module in them imports from the zip alone."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from experiments.launch import TRAINER_CODE
from inventory.ship import code_zip
from netem.fleet import AGENT_CODE

OURS = ("inventory", "netem", "trainer", "experiments")

# Import every module of the zip, then list each of wanlab's modules that came from elsewhere
# (an installed or editable copy on this machine, which a fleet host does not have).
IMPORT_ALL = """
import importlib, json, sys, zipfile
archive = sys.argv[1]
for name in zipfile.ZipFile(archive).namelist():
    importlib.import_module(name.removesuffix(".py").replace("/", ".").removesuffix(".__init__"))
outside = sorted(
    name for name, module in sys.modules.items()
    if name.split(".")[0] in {ours}
    and not (getattr(module, "__file__", "") or "").startswith(archive)
)
print(json.dumps(outside))
"""


@pytest.mark.parametrize("patterns", [AGENT_CODE, TRAINER_CODE], ids=["agent", "trainer"])
def test_every_shipped_module_imports_from_the_zip_alone(tmp_path, patterns):
    archive = tmp_path / "code.zip"
    archive.write_bytes(code_zip(patterns))
    assert zipfile.ZipFile(archive).namelist(), "the zip is empty"
    found = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL.replace("{ours}", repr(set(OURS))), str(archive)],
        cwd=tmp_path, env={"PYTHONPATH": str(archive), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout) == [], "imported from outside the shipped zip"
