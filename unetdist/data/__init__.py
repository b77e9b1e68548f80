"""Shards and the streaming pipeline (shards -> batches).

- `manifest.py` — the shard set's manifest.json: splits, k-fold lists, sizes, hashes, verification
- `classes.py` — the class table: names, indices, colours, ignore entry, mode (CLI, YAML, JSON)
- `codec.py` — PNG/JSON members of a sample: our own decoders, never pickles
- `tario.py` — reproducible tar shard writing and hashing
- `jsonsafe.py` — JSON from shards and run folders, parsed with size and depth limits
- `reader.py` — one shard's samples, decoded and checked
- `keys.py` — the sample id rule (shard keys become file names): checked on write and read
- `stream.py` — explicitly seeded, resumable per-rank/worker sample streams
- `pipeline.py` — train batches and exactly-once evaluation samples (DataLoader glue)
- `preprocess.py` — channels, CLAHE, gamma, normalisation (train = eval = predict)
- `augment.py` — paired image/label/FOV augmentation views

Sub-packages: `ingest/` (raw dataset -> shards), `stage/` (shared storage -> node-local).
"""
