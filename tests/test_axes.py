"""A new matrix axis is one entry in `experiments.axes.AXES`: the matrix, the cell ids, the
trainer configuration, the record, the report, the calibration, `wanlab predict` and the scale
model all take it from there.

The entry is added (a `seeds` axis setting the trainer's `seed`) in a fresh interpreter before
anything reads the table, as a new line in the table would be; this file touches no other
module. The interpreter reports what it saw as one JSON line; the tests judge it here, against
the same matrix read without the axis where there is one to compare with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.axes import AXES, match_tiers, point_keys, record_order
from experiments.matrix import load_matrix

ROOT = Path(__file__).resolve().parent.parent
MATRIX = """
[matrix]
name = "seeds"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 3
[axes]
profiles = ["default", "200mbit"]
"""
SEEDS = "seeds = [1, 2]\n"
WITH_SEED = """
import json
import sys
from pathlib import Path

from pydantic import StrictInt

import experiments.axes as axes

axes.AXES += (
    axes.Axis(
        "seeds", "seed", int, None, item=StrictInt, neutral=None, id_text=lambda v: f"seed{v}",
        owns=("seed",), label=lambda row: f"seed {row.seed}", match=1,
        column=("seed", lambda p: p.get("seed")),
    ),
)

from experiments.cli import main
from experiments.costmodel.calibrate import from_flops
from experiments.costmodel.fromresults import ResultsCalibration
from experiments.costmodel.predict import predict_matrix
from experiments.matrix import load_matrix
from experiments.report.data import load_results
from experiments.report.tables import variant_labels
from experiments.results import CellRecord, ResultsStore
from experiments.runner import describe_target
from experiments.scale import Lab, derive
from inventory.errors import ConfigError

folder = Path(sys.argv[1])
seen = {}


def refusal(path):
    try:
        load_matrix(path)
    except ConfigError as error:
        return [error.field, error.message]
    return None


spec = load_matrix(folder / "seeds.toml")
cells = spec.cells()
seen["ids"] = [cell.cell_id for cell in cells]
seen["params"] = [cell.params() for cell in cells]
seen["trainer_seeds"] = [spec.trainer_config(cell).seed for cell in cells]
seen["ids_without_axis"] = [cell.cell_id for cell in load_matrix(folder / "plain.toml").cells()]
plain = load_matrix(folder / "trainer.toml")
seen["trainer_seed_without_axis"] = [plain.trainer_config(cell).seed for cell in plain.cells()]
seen["refusal_trainer_and_axis"] = refusal(folder / "both.toml")
seen["refusal_bad_seed"] = refusal(folder / "negative.toml")

store = ResultsStore(folder / "results")
store.directory.mkdir()
(store.directory / "matrix.toml").write_text((folder / "seeds.toml").read_text())
for cell in cells:  # each cell's record as the runner writes it; the unshaped seed 2 is slower
    config = spec.trainer_config(cell)
    slow = 1.5 if cell.seed == 2 else 1.0
    stages = [
        {"rank": stage, "stage": stage, "replica": 0, "forward_per_micro_s": 0.01 * slow,
         "backward_per_micro_s": 0.02 * slow, "mean_s": {"optimizer_s": 0.001}}
        for stage in range(2)
    ]
    store.append(CellRecord(
        cell_id=cell.cell_id, status="ok", params=cell.params(),
        trainer=config.model_dump(mode="json", exclude={"out", "iface"}),
        network={"setting": describe_target(spec.targets[cell.profile])},
        summary={"phases": {"total_s": {"mean": 0.2 * slow, "std": 0.0}},
                 "phases_measured": ["total_s", "forward_s"], "stages": stages,
                 "timed_iterations": 2, "tokens_per_iteration": 4},
    ))
records = store.records()
seen["recorded_seeds"] = [record.params.seed for record in records]
seen["recorded_params"] = list(records[0].params.model_dump())
before = json.loads(store.cells_path.read_text().splitlines()[0])
del before["params"]["seed"]  # a record written before the axis
seen["seed_before_the_axis"] = CellRecord.model_validate(before).params.seed

results = load_results(store.directory)
seen["points"] = results.points[["profile", "seed"]].to_dict("records")
seen["labels"] = variant_labels(results.points).tolist()

calibrator = ResultsCalibration(records)
shaped = [cell for cell in cells if cell.profile == "200mbit"]
seen["calibrated_on"] = [calibrator.choose(cell.params()).cell_id for cell in shaped]

rows = predict_matrix(spec, lambda params: from_flops(), None)
seen["predicted_seeds"] = [row["params"]["seed"] for row in rows]
sys.argv = ["wanlab", "predict", str(folder / "seeds.toml")]
try:
    main()
except SystemExit as done:
    seen["predict_exit"] = done.code

try:
    derive(spec, from_flops(), Lab(latency_s=1e-4, ceiling_bps=1e9))
except ConfigError as error:
    seen["scale_refusal"] = [error.field, error.message]
print(json.dumps(seen, default=str))
"""


@pytest.fixture(scope="module")
def with_seed(tmp_path_factory) -> tuple[dict, str, Path]:
    """What a fresh interpreter with the `seeds` axis added saw, and its `wanlab predict`
    table."""
    folder = tmp_path_factory.mktemp("axes")
    (folder / "seeds.toml").write_text(MATRIX + SEEDS)
    (folder / "plain.toml").write_text(MATRIX)
    trainer_seed = MATRIX.replace("iterations = 3", "iterations = 3\nseed = 3")
    (folder / "trainer.toml").write_text(trainer_seed)
    (folder / "both.toml").write_text(trainer_seed + SEEDS)
    (folder / "negative.toml").write_text(MATRIX + "seeds = [1, -1]\n")
    child = subprocess.run(
        [sys.executable, "-c", WITH_SEED, str(folder)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={"COLUMNS": "250", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    *table, seen = child.stdout.strip().splitlines()
    return json.loads(seen), "\n".join(table), folder


def test_the_axis_doubles_the_cells_and_each_id_names_its_seed(with_seed):
    seen, _, _ = with_seed
    assert seen["ids"] == [
        "default|dp1|mb1|gpipe|ps|seed1|r0", "default|dp1|mb1|gpipe|ps|seed2|r0",
        "200mbit|dp1|mb1|gpipe|ps|seed1|r0", "200mbit|dp1|mb1|gpipe|ps|seed2|r0",
    ]  # fmt: skip
    assert [params["seed"] for params in seen["params"]] == [1, 2, 1, 2]
    assert list(seen["params"][0]) == [*(axis.field for axis in AXES), "seed", "repeat"]
    assert seen["trainer_seeds"] == [1, 2, 1, 2]


def test_a_matrix_without_the_axis_keeps_todays_ids_and_the_trainers_seed(with_seed):
    seen, _, folder = with_seed
    plain = [cell.cell_id for cell in load_matrix(folder / "plain.toml").cells()]
    assert seen["ids_without_axis"] == plain == [
        "default|dp1|mb1|gpipe|ps|r0", "200mbit|dp1|mb1|gpipe|ps|r0"
    ]  # fmt: skip
    assert seen["trainer_seed_without_axis"] == [3, 3]


def test_the_axis_owns_its_trainer_field(with_seed):
    seen, _, _ = with_seed
    assert seen["refusal_trainer_and_axis"] == [
        "trainer.seed", "is set per cell by axes.seeds; remove it"
    ]  # fmt: skip
    field, message = seen["refusal_bad_seed"]
    assert field == "axes.seeds[1]" and "greater than or equal to 0" in message


def test_records_carry_the_seed_and_older_ones_read_none(with_seed):
    seen, _, _ = with_seed
    assert seen["recorded_seeds"] == [1, 2, 1, 2]
    assert seen["recorded_params"] == [*record_order(), "seed"]
    assert seen["seed_before_the_axis"] is None


def test_the_report_has_a_point_per_seed_labelled_by_it(with_seed):
    seen, _, _ = with_seed
    assert [(p["profile"], p["seed"]) for p in seen["points"]] == [
        ("default", 1), ("default", 2), ("200mbit", 1), ("200mbit", 2)
    ]  # fmt: skip
    assert seen["labels"] == ["DP 1 · seed 1", "DP 1 · seed 2"] * 2


def test_calibration_takes_the_unshaped_cell_of_the_same_seed(with_seed):
    seen, _, _ = with_seed
    assert seen["calibrated_on"] == [
        "default|dp1|mb1|gpipe|ps|seed1|r0", "default|dp1|mb1|gpipe|ps|seed2|r0"
    ]  # fmt: skip


def test_predictions_carry_the_seed_in_a_column_of_their_own(with_seed):
    seen, table, _ = with_seed
    assert seen["predicted_seeds"] == [1, 2, 1, 2]
    assert seen["predict_exit"] in (None, 0)
    header = next(line for line in table.splitlines() if "profile" in line)
    columns = [column.strip() for column in header.split("┃") if column.strip()]
    assert columns[:6] == ["profile", "dp_degree", "mb", "engine", "seed", "predicted s"]


def test_a_scale_model_refuses_a_matrix_that_varies_the_seed(with_seed):
    seen, _, _ = with_seed
    assert seen["scale_refusal"][0] == "axes.seeds"


def test_the_table_orders_are_todays():
    """Without the new entry the rules over the table give the orders the code spelled out
    before the table (record, product and id, calibration), with the workload (issue 31)
    beside the micro-batch."""
    assert record_order() == [
        "profile", "dp_degree", "micro_batch", "engine", "dp_mode", "repeat", "workload", "tcp",
        "layout", "dtype", "recompute",
    ]  # fmt: skip
    assert point_keys() == [
        "profile", "tcp", "dp_degree", "micro_batch", "workload", "engine", "dp_mode", "layout",
        "dtype", "recompute",
    ]  # fmt: skip
    variant = ("layout", "dtype", "recompute")
    assert match_tiers() == [
        ("dp_degree", "micro_batch", "workload", "engine", "dp_mode", "tcp", *variant, "repeat"),
        ("dp_degree", "micro_batch", "workload", "engine", "dp_mode", "tcp", *variant),
        ("dp_degree", "micro_batch", "workload", "engine", "dp_mode", *variant),
        ("dp_degree", "micro_batch", "workload", *variant),
        ("dp_degree", "micro_batch", "workload"),
    ]
    assert [axis.key for axis in AXES if axis.optional] == ["layouts", "dtypes", "recompute"]
