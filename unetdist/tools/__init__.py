"""Self-contained tools behind commands.

- `demo.py` — `unetdist demo`: synth -> shard -> stage -> DDP train -> evaluate -> report
- `doctor.py` — `unetdist doctor`: what this machine can run
- `sweep.py` — `unetdist sweep`: grid/random trials into run folders, summary table
- `sweep_spec.py` — the sweep spec, typed and checked field by field before any trial
"""
