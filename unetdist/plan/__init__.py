"""`unetdist plan` and `unetdist inspect`: a dataset's fingerprint turned into a config.

- `fingerprint.py`: sizes, FOV diameters, class fractions, vessel calibre and intensity
  statistics of a split, read from the shards.
- `planner.py`: the decisions (scale, crop, batch, channels, eval tile, step budget), each with
  its reason, starting from the DRIVE recipe.
- `probe.py`: a few measured optimizer steps of the planned model on this device.
- `make.py`: `unetdist plan` end to end: fingerprint, decide, probe, write the YAML.
- `inspect_page.py`: `unetdist inspect`: per-split tables, outliers, a thumbnail montage, as
  an HTML page and a text summary.

Layer: beside tools; it may import train, eval, data, models and config, nothing below it
imports plan.
"""
