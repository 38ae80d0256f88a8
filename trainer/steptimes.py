"""Step times from a training job's own output: one parser per kind of output, fed line by line.

`parser_for(timing, pattern)` gives a parser whose `feed(line)` returns a `Step` for a line that
times one step, None for any other line, and raises `InvalidTiming` for a line that claims to
be a timing but is not a valid one. The kinds:

- `deepspeed`: DeepSpeed's `wall_clock_breakdown` lines (`[Rank 0] time (ms) | fwd: … | bwd: …
  | step: …`); the global line (with `fwd`, `bwd` and `step`) is one step, `fwd + bwd + step`,
  its timers mapped onto the trainer's phases;
- `jsonl` (and `lightning`, whose callback prints the same lines): a JSON object holding
  `iteration_s`, optionally the phase keys in seconds;
- `regex`: a user's pattern whose named group `seconds` or `ms` is the step's time.

Standard library only: it runs on the hosts, beside the job.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

PHASES = ("forward_s", "backward_s", "comm_wait_s", "ps_sync_s", "optimizer_s")
"""The trainer's phases a step may carry (`trainer.timing`)."""
KINDS = ("deepspeed", "lightning", "jsonl", "regex")
GROUPS = ("seconds", "ms")
"""The named groups a `regex` pattern gives a step's time with (exactly one of them)."""
_DEEPSPEED_MARK = "] time (ms) |"
_SHOWN = 80


class InvalidTiming(ValueError):
    """A line that claims to time a step but does not hold a valid time."""


@dataclass(frozen=True)
class Step:
    """One step's time, and the phases its line measured (seconds)."""

    iteration_s: float
    phases: dict[str, float] = field(default_factory=dict)


def _shown(line: str) -> str:
    return line if len(line) <= _SHOWN else line[: _SHOWN - 1] + "…"


def _seconds(value: object, line: str, what: str) -> float:
    """A finite, non-negative number of seconds, or InvalidTiming naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTiming(f"{what} is not a finite number: {_shown(line)}")
    if value < 0:
        raise InvalidTiming(f"{what} is negative: {_shown(line)}")
    return float(value)


class DeepSpeedSteps:
    """DeepSpeed's wall-clock breakdown: the global timer line is one step."""

    hint = 'a "[Rank 0] time (ms) | fwd: … | bwd: … | step: …" line: is wall_clock_breakdown on?'

    def __init__(self) -> None:
        self._allgather_ms = 0.0

    def feed(self, line: str) -> Step | None:
        """The step this line ends, if it is DeepSpeed's global timer line."""
        at = line.find(_DEEPSPEED_MARK)
        if at < 0:
            return None
        timers: dict[str, float] = {}
        for pair in line[at + len(_DEEPSPEED_MARK) :].split("|"):
            name, _, value = pair.partition(":")
            try:
                timers[name.strip()] = float(value)
            except ValueError:
                continue  # a figure that is not a time (a memory size)
        if "optimizer_allgather" in timers:
            self._allgather_ms = timers["optimizer_allgather"]
        if not all(name in timers for name in ("fwd", "bwd", "step")):
            return None  # the optimizer's line, or a micro-step's
        for name, ms in timers.items():
            _seconds(ms, line, name)
        fwd, bwd, step = timers["fwd"], timers["bwd"], timers["step"]
        allreduce = timers.get("bwd_allreduce", 0.0)
        inner = timers.get("bwd_inner", bwd - allreduce)
        allgather, self._allgather_ms = self._allgather_ms, 0.0
        phases_ms = {
            "forward_s": fwd,
            "backward_s": inner,
            "ps_sync_s": allreduce + allgather,
            "optimizer_s": max(step - allgather, 0.0),
            "comm_wait_s": 0.0,
        }
        return Step((fwd + bwd + step) / 1000, {k: v / 1000 for k, v in phases_ms.items()})


class JsonSteps:
    """One JSON object per step, holding `iteration_s` (and any of the phases) in seconds."""

    hint = 'a JSON line holding "iteration_s", e.g. {"iteration_s": 0.25}'

    def feed(self, line: str) -> Step | None:
        """The step of a JSON line with `iteration_s`; None for every other line."""
        text = line.strip()
        if not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or "iteration_s" not in data:
            return None
        seconds = _seconds(data["iteration_s"], line, "iteration_s")
        phases = {p: _seconds(data[p], line, p) for p in PHASES if p in data}
        return Step(seconds, phases)


class LightningSteps(JsonSteps):
    """The lines of wanlab's Lightning callback (`StepTimes`): JSON lines."""

    hint = "a JSON line of the StepTimes callback: is callbacks=[StepTimes()] in the Trainer?"


class RegexSteps:
    """A user's pattern: its named group `seconds` or `ms` is one step's time."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern)
        self.group = next(g for g in GROUPS if g in self.pattern.groupindex)
        self.hint = f"a line matching {pattern!r}"

    def feed(self, line: str) -> Step | None:
        """The step of a line the pattern matches."""
        match = self.pattern.search(line)
        if match is None:
            return None
        try:
            value = float(match.group(self.group))
        except (TypeError, ValueError):
            raise InvalidTiming(f"group {self.group} is not a number: {_shown(line)}") from None
        seconds = _seconds(value, line, self.group)
        return Step(seconds / 1000 if self.group == "ms" else seconds)


def check_pattern(pattern: str) -> None:
    """Raise ValueError unless `pattern` compiles and holds exactly one of the named groups."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"does not compile: {error}") from None
    held = [g for g in GROUPS if g in compiled.groupindex]
    if len(held) != 1:
        raise ValueError("needs exactly one named group, (?P<seconds>…) or (?P<ms>…)")


def parser_for(timing: str, pattern: str | None = None):
    """A fresh parser for the kind `timing` (`regex` takes `pattern`)."""
    if timing == "deepspeed":
        return DeepSpeedSteps()
    if timing == "lightning":
        return LightningSteps()
    if timing == "jsonl":
        return JsonSteps()
    if timing == "regex" and pattern is not None:
        return RegexSteps(pattern)
    raise ValueError(f"unknown timing {timing!r} (known: {', '.join(KINDS)})")
