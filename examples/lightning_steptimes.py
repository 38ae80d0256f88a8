"""A Lightning callback that prints one JSON line per training step on global rank 0.

Each line is `{"step": i, "iteration_s": t}`: `step` counts optimizer steps from 0 and
`iteration_s` is the wall time from the batch's start to the end of its optimizer step
(forward, backward, gradient all-reduce and update). Any Lightning script can use it:
`Trainer(callbacks=[StepTimes()])`.
"""

import json
import sys
import time

from lightning.pytorch.callbacks import Callback


class StepTimes(Callback):
    """Print `{"step": i, "iteration_s": t}` on global rank 0 after every training batch."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or self.started is None:
            return
        iteration_s = time.perf_counter() - self.started
        line = json.dumps({"step": trainer.global_step - 1, "iteration_s": round(iteration_s, 6)})
        print(line, file=self.stream, flush=True)
