"""Fuzz suite (issue 24): hostile shards, manifests and metadata fed to the readers in-process.

- `oracle.py` — the property each case must hold (success or a one-line UserError; no other
  exception, hang, memory above a bound or write outside its folder) and the tally
- `targets.py` — the registry of fuzz targets; adding one is a function plus `@target("name")`
- `mutate.py` — hypothesis strategies for hostile bytes, JSON documents and tar members
- `shardkit.py` — sound synthetic shard folders to mutate, re-tarring and re-hashing helpers
- `run_targets.py` — run-folder files and safetensors headers, fed to resume, report, evaluate,
  predict, export and the loaders; `runkit.py` — the session's tiny run they copy
- `spec_targets.py` — config YAMLs and sweep specs, fed to config, train --check and sweep
- `test_fuzz.py` — runs every target: FUZZ_CASES cases in all (fixed seed; `make fuzz`)
"""
