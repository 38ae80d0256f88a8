"""`python -m trainer.worker`: a rank process that stays up across runs, so torch is imported once.

It reads one JSON request per line on stdin, `{"argv": [trainer flags], "env": {"RANK": …,
"WORLD_SIZE": …, "MASTER_ADDR": …, "MASTER_PORT": …}}`, and runs that rank as `python -m
trainer` would (a fresh process group each time), in three steps:

1. it builds its stage, then answers `WANLAB-WORKER {"built": true}` and waits for the line
   `{"go": true}` — so the controller can shape the network while every rank is ready;
2. it joins the process group (so its connections are made on the shaped network), answers
   `{"joined": true}` and waits for `{"start": true}` — the controller probes the network
   meanwhile, so the join's round trips cost the cell no extra time;
3. it trains and answers `WANLAB-WORKER {"exit_code": …, "summary": …, "error": …}`.

A request that fails before connecting (bad flags) gets only the final answer. After a failed
run the process group may be unusable, so the worker answers and exits; a line other than the
go or start expected, or the end of input, ends the run as failed.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

MARK = "WANLAB-WORKER "
GO = {"go": True}
START = {"start": True}


def answer(**fields) -> None:
    """Print one protocol line."""
    print(MARK + json.dumps(fields), flush=True)


def say_and_wait(said: dict, expected: dict) -> None:
    """Answer `said`, then return on the line `expected`; raise on anything else."""
    answer(**said)
    line = sys.stdin.readline()
    if not line or json.loads(line) != expected:
        raise RuntimeError(f"the controller did not say {expected} (it sent {line.strip()!r})")


def wait_for_go() -> None:
    """Say the rank's stage is built; return on go."""
    say_and_wait({"built": True}, GO)


def wait_for_start() -> None:
    """Say the rank has joined its process group; return on start."""
    say_and_wait({"joined": True}, START)


def serve() -> int:
    """Answer requests until stdin ends or a run fails."""
    # The expensive imports, done once before "ready": torch.distributed, torch._dynamo (which
    # the first optimizer a process builds imports: seconds on a small host) and our own.
    import torch._dynamo  # noqa: F401
    import torch.distributed  # noqa: F401

    import trainer.netif  # noqa: F401 - pyroute2
    import trainer.train  # noqa: F401
    from trainer.__main__ import run_rank

    answer(ready=True, pid=os.getpid())
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        request = json.loads(line)
        os.environ.update({key: str(value) for key, value in request["env"].items()})
        try:
            exit_code, summary, error = run_rank(
                request["argv"], on_ready=wait_for_go, on_joined=wait_for_start
            )
        except Exception:  # noqa: BLE001 - reported to the controller, then this worker ends
            exit_code, summary, error = 1, None, traceback.format_exc(limit=3)
        answer(exit_code=exit_code, summary=summary, error=error)
        if exit_code == 1:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve())
