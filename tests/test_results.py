"""The cell record and the results store: what is written is what is read, old files included."""

from __future__ import annotations

import json

import pytest

from experiments.results import CellRecord, ResultsStore
from inventory.errors import ConfigError

SUMMARY = {
    "phases": {"total_s": {"mean": 0.5, "std": 0.01, "median": 0.5, "p10": 0.49, "p90": 0.51}},
    "timed_iterations": 4,
    "warmup_iterations_s": [0.9],
    "stages": [{"stage": 0, "forward_per_micro_s": 0.01}],
    "backend": "gloo",
}


def new_record(cell_id: str = "default|dp2|mb1|gpipe|ps|r0") -> dict:
    return {
        "cell_id": cell_id,
        "status": "ok",
        "params": {
            "profile": "default",
            "dp_degree": 2,
            "micro_batch": 1,
            "engine": "gpipe",
            "dp_mode": "ps",
            "repeat": 0,
        },  # fmt: skip
        "trainer": {"model": "tiny", "pipeline": 2, "dp_degree": 2},
        "network": {"setting": {"kind": "profile", "short": "default"}, "probe": []},
        "summary": SUMMARY,
        "placement": {"0": "h0", "1": "h1"},
        "timing": {"cell_s": 4.0},
    }


def test_a_record_reads_back_as_written(tmp_path):
    store = ResultsStore(tmp_path)
    record = CellRecord.model_validate(new_record())
    record.finish_timing()
    store.append(record)
    [read] = store.records()
    assert read == record
    assert read.config().world_size == 4
    assert read.placement == {0: "h0", 1: "h1"}
    assert read.summary.model_extra == {"backend": "gloo"}, "unnamed summary fields are kept"
    assert read.timing.training_s == pytest.approx(0.5 * 4 + 0.9)
    assert read.timing.overhead_share == pytest.approx((4.0 - 2.9) / 4.0)
    assert (tmp_path / "cells.parquet").is_file()


def test_files_written_before_the_renames_are_read_with_the_new_names(tmp_path):
    old = new_record()
    old["params"]["dp"] = old["params"].pop("dp_degree")
    old["trainer"]["data"] = old["trainer"].pop("dp_degree")
    old["network"]["setting"] = {"kind": "matrix", "short": "geo.toml", "links": []}
    (tmp_path / "cells.jsonl").write_text(json.dumps(old) + "\n")
    [read] = ResultsStore(tmp_path).records()
    assert read.params.dp_degree == 2
    assert read.trainer["dp_degree"] == 2 and "data" not in read.trainer
    assert read.network.setting["kind"] == "pairs"


def test_a_torn_last_line_is_skipped_and_a_foreign_line_is_named(tmp_path):
    good = json.dumps(new_record())
    (tmp_path / "cells.jsonl").write_text(good + "\n" + good[: len(good) // 2])
    assert len(ResultsStore(tmp_path).records()) == 1, "a crash can tear the last line"
    (tmp_path / "cells.jsonl").write_text(good + "\n" + json.dumps({"cell_id": "x"}) + "\n")
    with pytest.raises(ConfigError) as raised:
        ResultsStore(tmp_path).records()
    assert raised.value.field == "line 2: params"


def test_the_last_record_of_a_cell_wins(tmp_path):
    store = ResultsStore(tmp_path)
    failed = CellRecord.model_validate({**new_record(), "status": "failed", "summary": None})
    store.append(failed)
    store.append(CellRecord.model_validate(new_record()))
    store.append(CellRecord.model_validate(new_record("other")))
    assert [(r.cell_id, r.status) for r in store.latest()] == [
        ("default|dp2|mb1|gpipe|ps|r0", "ok"),
        ("other", "ok"),
    ]
    assert store.done_ids() == {"default|dp2|mb1|gpipe|ps|r0", "other"}


def test_a_record_appended_after_a_torn_line_is_kept_whole(tmp_path):
    good = json.dumps(new_record())
    (tmp_path / "cells.jsonl").write_text(good + "\n" + good[:40])  # a crash cut the last line
    store = ResultsStore(tmp_path)
    store.append(CellRecord.model_validate(new_record("after")))
    assert [r.cell_id for r in store.records()] == ["default|dp2|mb1|gpipe|ps|r0", "after"]
    assert store.torn_lines == [2]
