"""Shared storage -> node-local copy: one verified copy per node.

- `copy.py` — copy a shard while hashing it, per-shard completion markers
- `wait.py` — the staging lock and the other local ranks' wait for local rank 0
- `node.py` — `stage()` and `resolve_data_dir()` (what a job runs before its process group)
"""
