"""Matrix specs: the shipped ones load; malformed ones give one clear error and touch nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import GOOD_MATRIX, run_cli

from experiments.lab.demo import DEMO_MATRIX
from experiments.matrix import load_matrix
from experiments.plan import tc_preview
from inventory.models import DelayNode, Fleet, Host

MATRICES = Path(__file__).parent.parent / "experiments" / "matrices"


# (case, text replacing or added to GOOD_MATRIX, field named, words in the message)
MALFORMED = [
    ("syntax", "[axes\n", None, "not valid TOML"),
    ("unknown-section", GOOD_MATRIX + "[axis]\nx = 1\n", "axis", "unknown section"),
    (
        "no-profiles",
        GOOD_MATRIX.replace('profiles = ["default", "200mbit"]', ""),
        "axes.profiles",
        "required",
    ),
    ("unknown-profile", GOOD_MATRIX.replace('"200mbit"', '"d99x"'), "axes.profiles[1]", "d99x"),
    (
        "missing-profile-file",
        GOOD_MATRIX.replace('"200mbit"', '"geo.toml"'),
        "axes.profiles[1]",
        "no such",
    ),
    ("dp-zero", GOOD_MATRIX.replace("[1, 2]", "[1, 0]"), "axes.dp_degrees[1]", "greater than"),
    (
        "micro-batch-divides",
        GOOD_MATRIX + "micro_batches = [1, 3]\n",
        "axes.micro_batches[1]",
        "does not divide",
    ),
    ("unknown-model", GOOD_MATRIX.replace('"tiny"', '"gpt5"'), "trainer.model", "unknown model"),
    (
        "per-cell-field",
        GOOD_MATRIX.replace("batch = 4", "batch = 4\nmicro_batch = 2"),
        "trainer.micro_batch",
        "set per cell",
    ),
    ("duplicate-profile", GOOD_MATRIX.replace('"200mbit"', '"default"'), "axes.profiles", "twice"),
    (
        "repeats-zero",
        GOOD_MATRIX.replace('name = "t"', 'name = "t"\nrepeats = 0'),
        "matrix.repeats",
        "greater than or equal to 1",
    ),
    (
        "unknown-engine",
        GOOD_MATRIX + 'engines = ["fastest"]\n',
        "axes.engines[0]",
        "should be 'gpipe'",
    ),
    ("probe-negative", GOOD_MATRIX + "[probe]\nseconds = -1\n", "probe.seconds", "greater than"),
    ("timeout-zero", GOOD_MATRIX + "[timeouts]\ncell_s = 0\n", "timeouts.cell_s", "greater than 0"),
    (
        "stages-exceed-layers",
        GOOD_MATRIX.replace("pipeline = 2", "pipeline = 9"),
        "trainer.pipeline",
        "layers",
    ),
    (
        "layout-syntax",
        GOOD_MATRIX.replace("pipeline = 2\n", "") + 'layouts = ["tp2-pp1", "t2p2"]\n',
        "axes.layouts[1]",
        "not a layout like 'tp2-pp4'",
    ),
    (
        "layout-and-pipeline",
        GOOD_MATRIX + 'layouts = ["tp2-pp1"]\n',
        "trainer.pipeline",
        "set per cell by axes.layouts",
    ),
    (
        "layout-splits-no-heads",
        GOOD_MATRIX.replace("pipeline = 2\n", "") + 'layouts = ["tp1-pp2", "tp4-pp1"]\n',
        "axes.layouts[1]",
        "does not divide model 'tiny'",
    ),
    (
        "unknown-dtype",
        GOOD_MATRIX + 'dtypes = ["fp32", "fp8"]\n',
        "axes.dtypes[1]",
        "'fp32', 'fp16' or 'bf16'",
    ),
    (
        "recompute-not-bool",
        GOOD_MATRIX + 'recompute = ["yes"]\n',
        "axes.recompute[0]",
        "valid boolean",
    ),
    (
        "trainer-typo",
        GOOD_MATRIX.replace("iterations = 3", "iteration = 3"),
        "trainer.iteration",
        "not permitted",
    ),
]


@pytest.mark.parametrize("name", ["local-demo.toml", "seed-gpt3xl.toml"])
def test_shipped_matrices_load(name):
    spec = load_matrix(MATRICES / name)
    assert len(spec.cells()) == 10
    assert {cell.dp_degree for cell in spec.cells()} in ({1, 2}, {1, 4})


def test_seed_matrix_is_the_reference_experiment():
    spec = load_matrix(MATRICES / "seed-gpt3xl.toml")
    config = spec.trainer_config(spec.cells()[-1])
    assert (config.model, config.batch, config.micro_batch, config.pipeline) == (
        "gpt3-xl",
        64,
        1,
        12,
    )
    assert config.recompute and config.dtype == "fp32"
    assert spec.axes.profiles == ["default", "d1b5", "d5b2", "d10b1", "d50b1"]
    assert spec.max_world_size == 48


def test_layout_precision_and_recompute_axes_make_cells(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        GOOD_MATRIX.replace("pipeline = 2\n", "")
        + 'layouts = ["tp1-pp2", "tp2-pp2"]\ndtypes = ["fp32", "bf16"]\nrecompute = [true]\n'
    )
    spec = load_matrix(path)
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2 * 2  # profiles × DP degrees × layouts × dtypes
    widest = [c for c in cells if c.layout == "tp2-pp2" and c.dp_degree == 2][0]
    config = spec.trainer_config(widest)
    assert (config.tensor, config.pipeline, config.dp_degree) == (2, 2, 2)
    assert config.world_size == 8 and config.recompute
    assert widest.cell_id.endswith("|tp2-pp2|fp32|recompute|r0")
    assert spec.max_world_size == 8
    # a matrix without these axes keeps the cell ids it had before they existed
    path.write_text(GOOD_MATRIX)
    assert load_matrix(path).cells()[0].cell_id == "default|dp1|mb1|gpipe|ps|r0"


@pytest.mark.parametrize(
    ("case", "text", "field", "words"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_matrix_rejected(monkeypatch, capsys, tmp_path, case, text, field, words):
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, "run", str(path), "-o", str(out), "-i", "no-such-inventory.toml"
    )
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    prefix = f"wanlab: error: {path}: " + (f"{field}: " if field else "")
    assert lines[0].startswith(prefix), lines[0]
    assert words in lines[0], lines[0]
    assert not out.exists()  # nothing was started, nothing written


def test_cell_larger_than_fleet_rejected_before_any_host(
    monkeypatch, capsys, tmp_path, local_fleet
):
    path = tmp_path / "big.toml"
    path.write_text(GOOD_MATRIX.replace("[1, 2]", "[1, 4]"))
    out = tmp_path / "results"
    code, _, stderr = run_cli(monkeypatch, capsys, "run", str(path), "-o", str(out), "-i", "local")
    assert code == 2
    assert "hosts: a cell needs 8 ranks (layout tp1-pp2-dp4) but the inventory has 4" in stderr
    assert not out.exists()


def test_dry_run_prints_plan_and_touches_nothing(monkeypatch, capsys, tmp_path, local_fleet):
    path = tmp_path / "m.toml"
    path.write_text(GOOD_MATRIX)
    out = tmp_path / "results"
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "run", str(path), "-o", str(out), "-i", "local", "--dry-run"
    )
    assert code in (0, None)
    assert "200mbit|dp2|mb1|gpipe|ps|r0" in stdout and "h0 h1 h2 h3" in stdout
    assert "htb rate 200mbit" in stdout
    assert not out.exists()


def test_plan_shapes_where_the_fleet_shapes(tmp_path):
    """The plan's tc commands name the interface the hosts are shaped on: the delay node's
    (`ifbN`, from the inventory) where the fleet has one, else each host's own; a default
    profile leaves every host unshaped."""
    path = tmp_path / "m.toml"
    path.write_text(GOOD_MATRIX)
    spec = load_matrix(path)
    hosts = [Host(name=f"h{i}", address=f"198.18.0.{10 + i}", interface="eth0") for i in range(4)]
    interfaces = {host.name: f"ifb{i}" for i, host in enumerate(hosts)}
    on_node = Fleet(hosts=hosts, delay_node=DelayNode(mailbox=tmp_path, interfaces=interfaces))
    for fleet, expected in (
        (on_node, interfaces),
        (Fleet(hosts=hosts), dict.fromkeys(interfaces, "eth0")),
    ):
        preview = tc_preview(spec, fleet)
        assert preview["default"] == {name: ["(unshaped)"] for name in interfaces}
        for name, commands in preview["200mbit"].items():
            assert commands and all(f" dev {expected[name]} " in command for command in commands)


def test_the_demo_runs_a_shipped_matrix():
    assert DEMO_MATRIX.parent == MATRICES
    assert load_matrix(DEMO_MATRIX).header.name
