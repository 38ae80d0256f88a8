"""The step-time parsers against real output of DeepSpeed 0.19.8, Lightning 2.6.6 and a plain DDP
loop (tests/data/workloads, captured as its README says), and their refusals."""

import json
import re
from pathlib import Path

import pytest

from trainer.steptimes import InvalidTiming, check_pattern, parser_for

DATA = Path(__file__).parent / "data" / "workloads"
# DeepSpeed's global timer line, as its timer prints it (utils/timer.py): an independent reading
GLOBAL = re.compile(
    r"\[Rank 0\] time \(ms\) \| fwd: (?P<fwd>[\d.]+) \| bwd: (?P<bwd>[\d.]+) \| "
    r"bwd_inner: (?P<inner>[\d.]+) \| bwd_allreduce: (?P<allreduce>[\d.]+) \| "
    r"step: (?P<step>[\d.]+)"
)


def steps_of(name: str, timing: str, pattern: str | None = None) -> list:
    parser = parser_for(timing, pattern)
    lines = (DATA / name).read_text().splitlines()
    return [step for line in lines if (step := parser.feed(line)) is not None]


def test_deepspeed_zero2_steps_are_fwd_bwd_step_of_each_global_line():
    steps = steps_of("deepspeed-zero2-rank0.log", "deepspeed")
    lines = (DATA / "deepspeed-zero2-rank0.log").read_text().splitlines()
    expected = [m for line in lines if (m := GLOBAL.search(line))]
    assert len(steps) == len(expected) == 8
    for step, match in zip(steps, expected, strict=True):
        total = sum(float(match[k]) for k in ("fwd", "bwd", "step")) / 1000
        assert step.iteration_s == pytest.approx(total)
    # the first step, summed by hand from its three lines
    first = steps[0]
    assert first.iteration_s == pytest.approx((10.23 + 39.90 + 38.50) / 1000)
    assert first.phases == pytest.approx(
        {
            "forward_s": 0.01023,
            "backward_s": 0.02592,
            "ps_sync_s": (13.93 + 13.09) / 1000,  # bwd_allreduce + optimizer_allgather
            "optimizer_s": (38.50 - 13.09) / 1000,  # step less its all-gather
            "comm_wait_s": 0.0,
        }
    )


def test_deepspeed_zero0_has_no_allgather():
    steps = steps_of("deepspeed-zero0-rank0.log", "deepspeed")
    assert len(steps) == 6
    assert steps[0].iteration_s == pytest.approx((9.90 + 44.22 + 35.56) / 1000)
    assert steps[0].phases["ps_sync_s"] == pytest.approx(0.02523)
    assert steps[0].phases["optimizer_s"] == pytest.approx(0.03556)


def test_a_microstep_line_alone_is_no_step():
    parser = parser_for("deepspeed")
    line = "[Rank 0] time (ms) | fwd_microstep: 1.46 | bwd_microstep: 34.57 | step_microstep: 30.99"
    assert parser.feed(line) is None


@pytest.mark.parametrize(
    "name, timing", [("lightning-rank0.log", "lightning"), ("ddp-rank0.log", "jsonl")]
)
def test_json_lines_of_lightning_and_ddp(name, timing):
    lines = (DATA / name).read_text().splitlines()
    expected = [json.loads(line)["iteration_s"] for line in lines if '"iteration_s"' in line]
    steps = steps_of(name, timing)
    assert [s.iteration_s for s in steps] == expected
    assert len(steps) == 8
    assert all(s.phases == {} for s in steps)


def test_a_regex_gives_seconds_or_milliseconds():
    seconds = steps_of("ddp-rank0.log", "regex", r'"iteration_s": (?P<seconds>[\d.]+)')
    assert [s.iteration_s for s in seconds] == [
        s.iteration_s for s in steps_of("ddp-rank0.log", "jsonl")
    ]
    ms = steps_of("deepspeed-zero2-rank0.log", "regex", r"\| step: (?P<ms>[\d.]+)")
    assert ms[0].iteration_s == pytest.approx(0.0385)


@pytest.mark.parametrize(
    "line",
    ['{"iteration_s": NaN}', '{"iteration_s": -1}', '{"iteration_s": "fast"}',
     '{"iteration_s": 0.1, "forward_s": Infinity}', '{"iteration_s": true}'],
)  # fmt: skip
def test_an_invalid_json_timing_is_refused(line):
    with pytest.raises(InvalidTiming):
        parser_for("jsonl").feed(line)


def test_other_json_and_text_lines_are_ignored():
    parser = parser_for("jsonl")
    for line in ['{"loss": 0.5}', "{not json", "[1, 2]", "epoch 3", ""]:
        assert parser.feed(line) is None


def test_a_regex_match_that_is_no_number_is_invalid():
    with pytest.raises(InvalidTiming):
        parser_for("regex", r"took (?P<seconds>\S+)").feed("took many")


@pytest.mark.parametrize(
    "pattern", [r"(", r"step (\d+)", r"(?P<seconds>\d+) (?P<ms>\d+)", r"(?P<secs>\d+)"]
)
def test_a_pattern_needs_exactly_one_named_group(pattern):
    with pytest.raises(ValueError):
        check_pattern(pattern)


def test_nan_in_a_deepspeed_line_is_invalid():
    line = "[Rank 0] time (ms) | fwd: nan | bwd: 1.0 | step: 1.0"
    with pytest.raises(InvalidTiming):
        parser_for("deepspeed").feed(line)
