"""The controller: experiment matrices, the runner, results, reports, the local lab
(experiments/lab/) and the `wanlab` command (experiments/cli/)."""
