"""`[workloads.NAME]` tables and the workloads axis: cells, ids, counts and every refusal, each
naming its field, before any host is touched."""

import pytest

from experiments.matrix import cell_count, load_matrix
from experiments.workload.ranks import check_together
from inventory.errors import ConfigError
from inventory.models import Host

BASE = """
[matrix]
name = "w"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 2
[axes]
profiles = ["default", "100mbit"]
dp_degrees = [1, 2]
workloads = {workloads}
{axes}
[workloads.job]
command = ["{{python}}", "job.py", "--steps", "{{iterations}}"]
timing = "jsonl"
iterations = 5
ship = ["job.py"]
{table}
"""


def write(tmp_path, workloads='["trainer", "job"]', axes="", table=""):
    (tmp_path / "job.py").write_text("print('hi')\n")
    path = tmp_path / "m.toml"
    path.write_text(BASE.format(workloads=workloads, axes=axes, table=table))
    return path


def refusal(path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_matrix(path)
    return caught.value


def test_trainer_ids_stay_and_workload_cells_skip_trainer_axes(tmp_path):
    spec = load_matrix(write(tmp_path, axes='dp_modes = ["ps", "allreduce"]'))
    ids = [cell.cell_id for cell in spec.cells()]
    assert ids[:5] == [
        "default|dp1|mb1|gpipe|ps|r0",
        "default|dp1|mb1|gpipe|allreduce|r0",
        "default|dp1|mb1|workload=job|r0",
        "default|dp2|mb1|gpipe|ps|r0",
        "default|dp2|mb1|gpipe|allreduce|r0",
    ]
    assert len(ids) == cell_count(spec.axes, spec.header.repeats) == 2 * 2 * (2 + 1)
    job = [c for c in spec.cells() if c.workload == "job"][0]
    assert job.engine is None and job.dp_mode is None
    assert spec.layout(job).world_size == 1
    assert spec.workloads["job"].files == {"job.py": b"print('hi')\n"}


def test_a_matrix_without_the_axis_is_todays(tmp_path):
    path = write(tmp_path)
    text = path.read_text()
    text = text.replace('workloads = ["trainer", "job"]', "")
    text = text[: text.index("[workloads.job]")]
    path.write_text(text)
    ids = [cell.cell_id for cell in load_matrix(path).cells()]
    assert ids == ["default|dp1|mb1|gpipe|ps|r0", "default|dp2|mb1|gpipe|ps|r0",
                   "100mbit|dp1|mb1|gpipe|ps|r0", "100mbit|dp2|mb1|gpipe|ps|r0"]  # fmt: skip


@pytest.mark.parametrize(
    "workloads, axes, table, field, words",
    [
        ('["trainer", "jb"]', "", "", "axes.workloads[1]", "unknown workload 'jb'"),
        ('["trainer"]', "", "", "workloads.job", "not listed"),
        ('["job"]', 'dp_modes = ["ps", "allreduce"]', "", "axes.dp_modes", "varies only"),
        ('["job"]', "micro_batches = [1, 2]", "", "axes.micro_batches", "never uses"),
        ('["job"]', "", "warmup = 5", "workloads.job.warmup", "less than iterations"),
        ('["job"]', "", 'pattern = "x"', "workloads.job.pattern", "regex"),
        ('["job"]', "", 'env = {RANK = "3"}', "workloads.job.env.RANK", "set per rank"),
        ('["job"]', "", 'env = {OMP_NUM_THREADS = "3"}', "workloads.job.env.OMP_NUM_THREADS",
         "threads"),
        ('["job"]', "", 'env = {"A-B" = "3"}', "workloads.job.env", "not a variable name"),
        ('["job"]', "", "threads = 0", "workloads.job.threads", ""),
        ('["job"]', "", "colour = 1", "workloads.job.colour", ""),
        ('["job"]', "", 'workdir = "{rank}"', "workloads.job.workdir", "unknown variable {rank}"),
        ('["job"]', "", 'batch = "{micro}"', "workloads.job.batch", "unknown variable {micro}"),
        ('["job"]', "", 'prepare = ["{cell_id}"]', "workloads.job.prepare[0]", "cell_id"),
        ('["job"]', "", 'batch = "x{dp_degree}"', "workloads.job.batch", "'x1'"),
    ],
)  # fmt: skip
def test_refusals_name_their_field(tmp_path, workloads, axes, table, field, words):
    error = refusal(write(tmp_path, workloads, axes, table))
    assert error.field == field, error
    assert words in error.message


@pytest.mark.parametrize(
    "word, words",
    [("{rank:03}", "not a plain variable"), ("{x.y}", "not a plain variable"),
     ("{micro}", "unknown variable {micro}"), ("{", "brace")],
)  # fmt: skip
def test_command_templates_are_names_only(tmp_path, word, words):
    path = write(tmp_path)
    path.write_text(path.read_text().replace('"job.py", "--steps"', f'"job.py", "{word}"'))
    error = refusal(path)
    assert error.field == "workloads.job.command[2]"
    assert words in error.message


@pytest.mark.parametrize("ship", ["../job.py", "/etc/passwd", "missing.py", "."])
def test_shipped_files_stay_beside_the_matrix_and_are_regular(tmp_path, ship):
    path = write(tmp_path)
    path.write_text(path.read_text().replace('ship = ["job.py"]', f'ship = ["{ship}"]'))
    assert refusal(path).field == "workloads.job.ship[0]"


def test_trainer_is_no_workload_name(tmp_path):
    path = write(tmp_path)
    path.write_text(path.read_text() + '\n[workloads.trainer]\ncommand = ["x"]\n')
    assert refusal(path).field == "workloads.trainer"


def test_a_workload_needs_each_hosts_ranks_together():
    hosts = [Host(name=name, address="127.0.0.1", slots=2) for name in ("h0", "h1")]
    check_together([hosts[0], hosts[0], hosts[1], hosts[1]], "m.toml")
    with pytest.raises(ConfigError) as caught:
        check_together([hosts[0], hosts[1], hosts[0], hosts[1]], "m.toml")
    assert caught.value.field == "placement"
    assert "h0's ranks together (ranks 0 and 2)" in caught.value.message
