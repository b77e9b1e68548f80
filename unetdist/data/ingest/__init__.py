"""Raw dataset -> verified webdataset shards.

- `layouts.py` — find image/label/FOV triples per dataset layout and split
- `readers.py` — read raw images and masks (TIFF, GIF palettes, PNG, JPEG, ...)
- `checks.py` — validate every sample up front (sizes, binary masks) and list the problems
- `writer.py` — `shard_dataset`: encode samples into tar shards + manifest, atomically
- `synth.py` — synthetic DRIVE-layout datasets for tests and the demo
- `vessels.py` — the synthetic vessel-tree renderer behind synth
"""
