"""Raw dataset -> verified webdataset shards.

- `records.py` — what discovery finds: sample records (one sample's files), problems
- `layouts.py` — find image/label/FOV triples per dataset layout and split (drive, seed, folders)
- `datasets.py` — the CHASE_DB1, STARE and HRF layouts, as their owners ship them
- `readers.py` — read raw images and masks (TIFF, GIF palettes, PNG, JPEG, PPM(.gz), ...)
  and the two-level mask rule
- `colour_masks.py` — colour-coded (JPEG too) and index label masks -> checked class-index maps;
  multilabel channel stacks
- `detect.py` — which known layout a folder looks like (the hint of a wrong --layout error)
- `fov.py` — estimate a fundus image's field of view (shard and predict), its diameter
- `folds.py` — `--folds K`: deal the training samples into seeded folds
- `checks.py` — validate every sample up front (sizes, binary masks) and list the problems
- `writer.py` — `shard_dataset`: encode samples into tar shards + manifest, atomically
- `synth.py` — synthetic DRIVE-layout datasets for tests and the demo
- `synth_av.py` — synthetic artery/vein datasets (class-index labels) in RITE's layout
- `vessels.py` — the synthetic vessel-tree renderer behind synth, and the image `Geometry`
  it draws into
"""
