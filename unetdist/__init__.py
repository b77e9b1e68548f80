"""unetdist: distributed UNet training for retinal vessel segmentation.

The package is grouped by stage of the job; imports go top-down
(commands > tools > train > track > eval > data, models > the shared modules below).
Each package's docstring names every module in it and its one job.

Shared modules:
- `cli.py` — `unetdist <command>`: the subcommand table, one `error:` line per user mistake
- `__main__.py` — `python -m unetdist`
- `config.py` — `RunConfig`: YAML + dotted overrides, validation, the one merger
- `sections.py` — the config sections (one dataclass per builder) and their field checks
- `errors.py` — UserError and friends (exit status 2)
- `yamlio.py` — YAML files (configs, sweep specs): no duplicate keys or alias bombs, FILE:LINE errors
- `log.py` — rank-aware console output and progress (once per job, non-TTY lines)
- `atomic.py` — crash-safe file and folder writes (the only temp+rename code)
- `distributed.py` — the Accelerator factory, precision and device decisions, collectives

Packages: `commands/` (one module per subcommand), `data/` (shards, streaming; `data/ingest/`
raw dataset -> shards, `data/stage/` shared -> node-local), `models/`, `train/`, `eval/`,
`track/`, `tools/`, `resources/` (configs and launch files shipped in the wheel).
"""

__version__ = "0.1.0"
