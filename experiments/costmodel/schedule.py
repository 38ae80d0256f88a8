"""The order in which each pipeline stage runs its forward and backward micro-batch steps.

`gpipe`: every forward, then every backward, last micro-batch first (the trainer's schedule).
`1f1b`: stage s runs min(M, S − s) forwards, then alternates one backward and one forward,
then the remaining backwards, micro-batches in order.
"""

from __future__ import annotations

from functools import lru_cache

SCHEDULES = ("gpipe", "1f1b")

Op = tuple[int, bool, int]
"""(stage, is_backward, micro-batch)."""


def stage_ops(schedule: str, stage: int, n_stages: int, n_micro: int) -> list[tuple[bool, int]]:
    """The (is_backward, micro-batch) steps of one stage, in the order it runs them."""
    if schedule == "gpipe":
        return [(False, m) for m in range(n_micro)] + [
            (True, m) for m in range(n_micro - 1, -1, -1)
        ]
    if schedule == "1f1b":
        warmup = min(n_micro, n_stages - stage)
        ops = [(False, m) for m in range(warmup)]
        for m in range(n_micro):
            ops.append((True, m))
            if warmup + m < n_micro:
                ops.append((False, warmup + m))
        return ops
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def _dependency(op: Op, n_stages: int) -> Op | None:
    stage, backward, m = op
    if not backward:
        return (stage - 1, False, m) if stage > 0 else None
    return (stage + 1, True, m) if stage < n_stages - 1 else (stage, False, m)


@lru_cache(maxsize=64)
def op_order(schedule: str, n_stages: int, n_micro: int) -> tuple[Op, ...]:
    """Every step of every stage in an order where each step follows what it waits for."""
    per_stage = [stage_ops(schedule, s, n_stages, n_micro) for s in range(n_stages)]
    position = [0] * n_stages
    done: set[Op] = set()
    order: list[Op] = []
    total = sum(len(ops) for ops in per_stage)
    while len(order) < total:
        advanced = False
        for s, ops in enumerate(per_stage):
            while position[s] < len(ops):
                op = (s, *ops[position[s]])
                needed = _dependency(op, n_stages)
                if needed is not None and needed not in done:
                    break
                done.add(op)
                order.append(op)
                position[s] += 1
                advanced = True
        if not advanced:
            raise ValueError(f"schedule {schedule!r} deadlocks with {n_stages} stages")
    return tuple(order)
