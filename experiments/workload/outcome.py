"""How a workload's cell went: its processes' exits and the timing rank's steps → status and
summary (`experiments.results.Summary`, as the trainer's rank 0 gives it)."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.workload.spec import WorkloadSpec
from trainer.steptimes import PHASES
from trainer.timing import spread


@dataclass
class Outcome:
    """A cell's status: ok with a summary, or the reason it failed (the summary kept when
    steps were timed)."""

    ok: bool
    reason: str | None
    note: str | None
    summary: dict | None


def _who(report: dict) -> str:
    return f"rank {report['rank']} on {report['host']}"


def _last_line(report: dict) -> str:
    tail = report.get("tail") or []
    return tail[-1][:200] if tail else "no output"


def _exit_text(report: dict) -> str:
    if report.get("signal"):
        return f"was killed by {report['signal']}"
    return f"exited with {report['code']}"


def summarize(workload: WorkloadSpec, steps: list[dict], world_size: int) -> dict | None:
    """The summary of the timed steps (those after the warm-up); None without any."""
    warmup = workload.table.warmup
    timed = steps[warmup:]
    if not timed:
        return None
    measured = [p for p in PHASES if all(p in step["phases"] for step in timed)]
    phases = {"total_s": spread([step["iteration_s"] for step in timed])}
    phases |= {p: spread([step["phases"][p] for step in timed]) for p in measured}
    arrivals = [step["at"] for step in steps]
    return {
        "phases": phases,
        "timed_iterations": len(timed),
        "warmup_iterations_s": [step["iteration_s"] for step in steps[:warmup]],
        "phases_measured": measured,
        "world_size": world_size,
        "iterations_s": [step["iteration_s"] for step in timed],
        "arrivals_s": arrivals,
        "startup_s": arrivals[0] if arrivals else None,
    }


def decide(
    workload: WorkloadSpec,
    reports: dict[int, dict],
    lost: dict[str, str],
    timed_out_s: float | None,
    world_size: int,
) -> Outcome:
    """The cell's outcome from every process's exit report (by rank; each with its `host`),
    the hosts that stopped answering, and the limit it hit (None: it did not)."""
    table = workload.table
    timing = reports.get(table.timing_rank, {})
    steps = timing.get("steps") or []
    summary = summarize(workload, steps, world_size)
    printed = len(steps)
    whole = printed == table.iterations and not timing.get("invalid")
    bad = sorted(
        (r for r in reports.values() if (r.get("code") or r.get("signal")) and not r["stopped"]),
        key=lambda r: r.get("at") or 0,
    )
    starts = [r for r in reports.values() if r.get("start_error")]
    if starts:
        first = starts[0]
        return Outcome(
            False, f"{_who(first)} could not start: {first['start_error']}", None, summary
        )
    if lost:
        host, why = next(iter(lost.items()))
        return Outcome(False, f"{host} stopped answering ({why})", None, summary)
    if timed_out_s is not None and not whole:
        last = _last_line(timing) if timing else "no output"
        return Outcome(
            False,
            f"timed out after {timed_out_s:g} s: rank {table.timing_rank} "
            f"printed {printed} of {table.iterations} step timings; last line: {last}",
            None,
            summary,
        )
    if bad and not whole:
        first = bad[0]
        stopped = sum(1 for r in reports.values() if r["stopped"])
        more = f" ({stopped} more process(es) stopped)" if stopped else ""
        return Outcome(
            False, f"{_who(first)} {_exit_text(first)}: {_last_line(first)}{more}", None, summary
        )
    if timing.get("invalid"):
        return Outcome(
            False,
            f"rank {table.timing_rank} printed an invalid timing on {timing['invalid']}",
            None,
            summary,
        )
    if printed == 0:
        hint = timing.get("hint") or ""
        return Outcome(
            False,
            f"printed no timing: no line of rank {table.timing_rank} matched "
            f"the {table.timing} parser ({hint})",
            None,
            None,
        )
    if printed != table.iterations:
        cause = (
            " (does the pattern match more than one line per step?)"
            if printed > table.iterations
            else ""
        )
        return Outcome(
            False,
            f"rank {table.timing_rank} printed {printed} step timings, "
            f"expected {table.iterations} (iterations){cause}",
            None,
            summary,
        )
    note = None
    if bad:
        first = bad[0]
        note = f"{_who(first)} {_exit_text(first)} after every step was printed"
    return Outcome(True, None, note, summary)
