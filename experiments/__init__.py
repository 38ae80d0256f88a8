"""The controller: experiment matrices, the runner, results, reports and the `wanlab` CLI."""
