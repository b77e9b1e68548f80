"""The run's configuration: one tree of dataclasses, loaded from YAML and dotted overrides.

Import what you need from here (`from unetdist.config import RunConfig, DataConfig,
load_config`); the modules say where each part lives:
- `run.py` — `RunConfig`: the sections as one tree and the checks that span two sections
- `sections.py` — the sections, one dataclass per builder, each checking its own fields
- `checks.py` — the field checks behind every one-line `<field> must be ..., got ...` error
- `names.py` — names owned elsewhere (models, losses, optimizers, precisions, TTA modes),
  asked for at validation; the config package's only (lazy) way up the import layers
- `loading.py` — YAML files, stored configs and dotted overrides through the one merger
"""

from unetdist.config.loading import (
    config_from_dict,
    default_run_dir,
    load_config,
    to_dict,
    to_yaml,
)
from unetdist.config.run import SECTIONS, RunConfig
from unetdist.config.sections import (
    AugConfig,
    CheckpointConfig,
    DataConfig,
    DistConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrackConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = ["SECTIONS", "AugConfig", "CheckpointConfig", "DataConfig", "DistConfig",
           "EvalConfig", "LossConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrackConfig",
           "TrainConfig", "WandbConfig", "config_from_dict", "default_run_dir", "load_config",
           "to_dict", "to_yaml"]
