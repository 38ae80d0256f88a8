"""A job that misbehaves on purpose, for the workload engine's failure tests (standard library).

The failures a real framework shows only by chance (a hang, a crash on one rank, no timing, an
abort at exit) must happen every time in a test, so this stand-in makes them happen:

    python misbehave.py MODE STEPS

MODE: `ok` (every rank prints STEPS JSON step lines on rank 0), `hang` (rank 0 prints 2 steps,
leaves a child in a new session and a double-forked daemon behind, then sleeps), `crash` (rank 1
prints `boom` and exits 3; the others sleep as a rank blocked in a collective would), `silent`
(exits 0, printing only other lines), `short` (rank 0 prints 3 of STEPS), `abortexit` (every step,
then rank 1 aborts a second later).
"""

import json
import os
import subprocess
import sys
import time


def daemon() -> None:
    """A double-forked process in a session of its own that sleeps."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(3600)
        os._exit(0)


def main() -> None:
    mode, steps = sys.argv[1], int(sys.argv[2])
    rank = int(os.environ["RANK"])
    printed = {"hang": 2, "short": 3, "silent": 0}.get(mode, steps)
    if mode == "crash" and rank == 1:
        print("boom", flush=True)
        sys.exit(3)
    for step in range(printed if rank == 0 else 0):
        print(json.dumps({"step": step, "iteration_s": 0.01}), flush=True)
        time.sleep(0.01)
    if mode == "silent":
        print("training without a word about time", flush=True)
    if mode == "hang":
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True
        )
        daemon()
        time.sleep(3600)
    if mode == "crash":
        time.sleep(3600)
    if mode == "abortexit" and rank == 1:
        time.sleep(1)  # rank 0 has printed every step meanwhile
        os.abort()


if __name__ == "__main__":
    main()
