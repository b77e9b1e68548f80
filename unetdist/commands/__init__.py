"""One module per CLI command (see unetdist.cli): parse arguments, call library code.

- `_common.py` — arguments shared by commands (config + overrides, --quiet)
- `config.py` `doctor.py` `synth.py` `shard.py` `inspect.py` `plan.py` `stage.py`
  `train.py` `evaluate.py` `predict.py` `export.py` `report.py` `bench.py` `demo.py`
  `sweep.py` — `unetdist <that command>`
"""
