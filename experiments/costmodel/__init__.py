"""The analytic cost model: `workload` (what a cell computes and sends), `network` (what a link
costs), `schedule` and `barrier` (how the pipeline and gloo's barrier play out), `analytic` (the
iteration time and its parts), `collectives` (what each DP mode's sync and each ring inside a
stage cost), `calibrate` (per-stage compute measured here or on the reference) and
`fromresults` (which measured cell calibrates which), `predict` (a matrix's cells) and
`simulate` (a world-wide fleet); `wanlab predict` is experiments/cli/predict.py."""
