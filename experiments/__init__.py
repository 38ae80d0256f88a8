"""The controller: experiment matrices, the runner, results, reports, the local lab
(experiments/lab/) and the `wanlab` command (experiments/cli/).

`axes.py` (a cell's axes, one table) and `matrix.py` (matrix specs); `placement.py` (which host
runs which rank); `plan.py` (`run --dry-run`); `runner.py` and `launch.py` (running the cells;
`localranks.py` runs ranks on this machine for tests and benches); `results.py` (the cell
record, its one writer and reader); `scale.py` with `scalespec.py` and `scalegroups.py` (scale
models of real fleets). Subpackages: `report/`, `costmodel/`, `lab/`, `cli/`.
"""
