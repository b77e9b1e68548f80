"""The typed config tree: `RunConfig` of the sections, YAML loading, dotted overrides, validation.

The sections themselves (one dataclass per builder) live in `unetdist.sections`; they are
importable from here too, as `RunConfig`'s field types.

Precedence is CLI overrides > YAML file > defaults. OmegaConf does the merging and the type
coercion; we validate values once, after merging, and report every problem as one line that
names the dotted field (`optim.lr must be > 0, got -1`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from unetdist.errors import ConfigError
from unetdist.sections import (
    CheckpointConfig,
    DataConfig,
    DistConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrackConfig,
    TrainConfig,
    _require,
)

SECTIONS = ("data", "model", "loss", "optim", "train", "eval", "track", "checkpoint", "dist")


@dataclass
class RunConfig:
    """The whole run. Each builder receives only its section."""

    seed: int = 0  # global seed; per-rank/worker seeds derive from it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, ">= 0")
        for name in SECTIONS:
            getattr(self, name).check(name)
        _require(self.optim.schedule_by == "steps" or self.train.max_minutes > 0,
                 "optim.schedule_by", self.optim.schedule_by, "steps when train.max_minutes=0 "
                 "(a time schedule needs a time budget)")
        if self.model.in_channels == 0:
            self.model.in_channels = self.data.in_channels
        if self.eval.resize == -1:  # a model trained on resized images is scored at that scale
            self.eval.resize = self.data.resize
        _require(self.eval.resize == 0 or self.eval.scale == 1.0, "eval.scale", self.eval.scale,
                 f"1.0 with eval.resize={self.eval.resize} (choose one way to rescale)")
        _require(self.model.in_channels == self.data.in_channels, "model.in_channels",
                 self.model.in_channels, f"{self.data.in_channels} for data.channels="
                 f"{self.data.channels}")


# ----------------------------------------------------------------------------- loading


def _wrap_omegaconf_error(e: Exception) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).split("\n")[0]
    if type(e).__name__ == "ConfigKeyError" or "not in" in msg:
        return ConfigError(f"unknown config key {key!r} ({msg})")
    return ConfigError(f"{key}: {msg}" if key else msg)


def _check_overrides(overrides: list[str] | tuple, only: str | None) -> None:
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like section.field=value")
        if only is not None and not o.startswith(f"{only}."):
            raise ConfigError(f"only {only}.key=value overrides are allowed here, got {o!r}")


def _yaml_layer(path: Path):
    from omegaconf import OmegaConf

    from unetdist.yamlio import load_yaml

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    loaded = load_yaml(path, "config file")  # duplicate keys, syntax, alias bombs: one line
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return OmegaConf.create(loaded)


def _merge(base: Path | dict | None, overrides: list[str] | tuple) -> RunConfig:
    """The one merger: defaults < base (a YAML file or a stored config) < dotted overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        layers = [OmegaConf.structured(RunConfig)]
        if isinstance(base, Path):
            layers.append(_yaml_layer(base))
        elif base is not None:
            layers.append(OmegaConf.create(base))
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(OmegaConf.merge(*layers))  # __post_init__ validates
    except OmegaConfBaseException as e:
        raise _wrap_omegaconf_error(e) from None
    except ValueError as e:  # yaml errors and the like
        raise ConfigError(str(e).split("\n")[0]) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Defaults < YAML file < dotted overrides, then validate. Raises ConfigError."""
    _check_overrides(overrides, None)
    cfg = _merge(None if path is None else Path(path), overrides)
    if cfg.train.run_dir:
        return cfg
    stem = Path(path).stem if path is not None else "default"
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                              run_dir=str(default_run_dir(stem))))


def default_run_dir(stem: str) -> Path:
    """runs/<config stem>; inside a W&B sweep (the agent sets WANDB_SWEEP_ID and WANDB_RUN_ID
    for each run it starts) runs/<stem>/sweep-<id>/<run id>, so runs never share a folder."""
    import os

    sweep, run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run:
        return Path("runs") / stem / f"sweep-{sweep}" / run
    return Path("runs") / stem


def config_from_dict(d: dict, overrides: list[str] | tuple = (), *,
                     only: str | None = None) -> RunConfig:
    """Rebuild a config stored in a checkpoint or best/ folder (same validation).

    `overrides` apply on top; `only="eval"` restricts them to one section (a trained model's
    preprocessing and architecture must stay those it was trained with).
    """
    _check_overrides(overrides, only)
    return _merge(d, overrides)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
