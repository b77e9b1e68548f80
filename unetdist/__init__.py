"""unetdist: distributed UNet training for retinal vessel segmentation.

The package is grouped by stage of the job; imports go top-down
(commands > bench, tools > train > track > eval > data, models > the shared modules below;
tests/unit/test_layout.py checks the direction).
Each package's docstring names every module in it and its one job.

Shared modules:
- `cli.py` — `unetdist <command>`: the subcommand table, one `error:` line per user mistake
- `__main__.py` — `python -m unetdist`
- `errors.py` — UserError and friends (exit status 2)
- `yamlio.py` — YAML files (configs, sweep specs): no duplicate keys or alias bombs, FILE:LINE errors
- `log.py` — rank-aware console output and progress (once per job, non-TTY lines)
- `atomic.py` — crash-safe file and folder writes (the only temp+rename code)
- `distributed.py` — the Accelerator factory, precision and device decisions, collectives
- `runfolder.py` — the run folder: layout, `latest`, --checkpoint forms, reading best/
  (train writes it; train and eval read it through this module)

Packages: `config/` (`RunConfig` and its sections, YAML + dotted overrides, validation, the one
merger), `commands/` (one module per subcommand), `data/` (shards, streaming; `data/ingest/`
raw dataset -> shards, `data/stage/` shared -> node-local), `models/`, `train/`, `eval/`,
`track/`, `tools/`, `resources/` (configs and launch files shipped in the wheel).
"""

__version__ = "0.1.0"
