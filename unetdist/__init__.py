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

The public Python API: `load_model` (`eval/api.py`), imported on first use so that
`import unetdist` and `unetdist --help` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from unetdist.eval.api import load_model

        return load_model
    raise AttributeError(f"module 'unetdist' has no attribute {name!r}")
