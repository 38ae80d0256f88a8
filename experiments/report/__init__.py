"""Reports from results folders: `write` builds them from `data` (records to tidy rows),
`tables`, `plots` and `html`; `cli` is `wanlab report`."""
