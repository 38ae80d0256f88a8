"""What runs on the hosts: a GPT trained with GPipe pipelines, tensor-parallel stages and
data-parallel replicas (a centralized parameter server by default).

`model.py` (the GPT) and `config.py` (a run's settings); `partition.py` (stages) and `layout.py`
(where each rank sits in a tensor × pipeline × data layout); `gpipe.py` (wanlab's GPipe over
point-to-point sends, ours or the reference system's schedule) and `pipelining.py` (the
`torch.distributed.pipelining` engines), chosen in `engines.py`; `tensorparallel.py`; the
data-parallel modes behind `gradsync.py`: `dataparallel.py` and `fullyshard.py` (`fsdp`);
`emulated.py` (emulated compute for scale models); `data.py` (token batches); `timing.py`;
`netif.py`; `train.py`, `python -m trainer` (`__main__.py`) and the long-lived
`python -m trainer.worker` (`worker.py`).
"""

from trainer.layout import Layout, Position

__all__ = ["Layout", "Position"]
