"""Tracking and reporting (rank 0).

- `jsonl.py` — the Tracker protocol, the local metrics.jsonl tracker, `open_tracker`
- `wandb_tracker.py` — Weights & Biases behind the Tracker protocol
- `runinfo.py` — run_dir/config.yaml + versions, git hash, hosts
- `report.py` — the run's report.html
- `report_eval.py` — the report's sections, one per evaluation folder (eval-*/)
- `report_html.py` — HTML building blocks of the report
"""
