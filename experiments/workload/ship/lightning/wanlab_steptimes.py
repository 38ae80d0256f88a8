"""Step times of a Lightning job, one JSON line per training step on global rank 0.

wanlab ships this folder to the hosts and puts it on a Lightning job's PYTHONPATH; its
`wanlab_steptimes-1.0.dist-info` registers the factories below under Lightning's
`callbacks_factory` entry points, so every `Trainer` gets the callback without a change to the
job's script. Each line is `{"step": i, "iteration_s": t}`: `iteration_s` is the wall time from
the batch's start to the end of its optimizer step (forward, backward with the gradient
all-reduce, update; data loading excluded). Never imported by wanlab itself.
"""

import json
import sys
import time


def _steptimes(base):
    class StepTimes(base):
        """Print `{"step": i, "iteration_s": t}` on global rank 0 after every training batch."""

        def __init__(self):
            self.started = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not trainer.is_global_zero or self.started is None:
                return
            seconds = time.perf_counter() - self.started
            line = json.dumps({"step": trainer.global_step - 1, "iteration_s": round(seconds, 6)})
            print(line, file=sys.stdout, flush=True)

    return StepTimes()


def lightning_callbacks():
    """The callback for `import lightning` jobs."""
    from lightning.pytorch.callbacks import Callback

    return [_steptimes(Callback)]


def pytorch_lightning_callbacks():
    """The callback for `import pytorch_lightning` jobs."""
    from pytorch_lightning.callbacks import Callback

    return [_steptimes(Callback)]
