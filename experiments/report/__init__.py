"""Reports from results folders: `write` builds them from `data` (records to tidy rows),
`tables`, `plots` and `html`, and a scale model's comparison in `scalemodel`; `wanlab report`
is experiments/cli/report.py."""
