"""`python -m trainer.worker`: a rank process that stays up across runs, so torch is imported once.

It reads one JSON request per line on stdin, `{"argv": [trainer flags], "env": {"RANK": …,
"WORLD_SIZE": …, "MASTER_ADDR": …, "MASTER_PORT": …}}`, runs that rank exactly as
`python -m trainer` would (a fresh process group each time), and answers one line
`WANLAB-WORKER {"exit_code": …, "summary": …, "error": …}`. After a failed run the process
group may be unusable, so the worker answers and exits; end of input also ends it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

MARK = "WANLAB-WORKER "


def answer(**fields) -> None:
    """Print one protocol line."""
    print(MARK + json.dumps(fields), flush=True)


def serve() -> int:
    """Answer requests until stdin ends or a run fails."""
    import torch.distributed  # noqa: F401 - the expensive import, done once, before "ready"

    from trainer.__main__ import run_rank

    answer(ready=True, pid=os.getpid())
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        os.environ.update({key: str(value) for key, value in request["env"].items()})
        try:
            exit_code, summary, error = run_rank(request["argv"])
        except Exception:  # noqa: BLE001 - reported to the controller, then this worker ends
            exit_code, summary, error = 1, None, traceback.format_exc(limit=3)
        answer(exit_code=exit_code, summary=summary, error=error)
        if exit_code == 1:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve())
