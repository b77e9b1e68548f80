"""Loading a `RunConfig`: YAML files, stored configs, dotted overrides, the one merger.

Precedence is CLI overrides > YAML file > defaults. OmegaConf does the merging and the type
coercion; we validate values once, after merging, and report every problem as one line that
names the dotted field (`optim.lr must be > 0, got -1`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from unetdist.config.run import RunConfig
from unetdist.errors import ConfigError, one_line


def _first_line(e: Exception) -> str:
    return one_line(str(e).split("\n")[0])


def _wrap_omegaconf_error(e: Exception) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    msg = _first_line(e)
    if type(e).__name__ == "ConfigKeyError" or "not in" in msg:
        return ConfigError(f"unknown config key {key!r} ({msg})")
    return ConfigError(f"{one_line(str(key))}: {msg}" if key else msg)


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
    _check_depth(loaded, f"config file {path}")
    _check_containers(loaded, dataclasses.asdict(RunConfig()))
    return OmegaConf.create(loaded)


MAX_DEPTH = 8  # a config nests 3 levels (track.wandb.tags); OmegaConf recurses ~15 frames a level


def _check_depth(given: object, where: str) -> None:
    """Refuse a deeper tree before OmegaConf walks it: a stored config (safetensors metadata,
    config.yaml) is untrusted, and 60 levels already exhaust Python's recursion limit there."""
    level = [given]
    for depth in range(MAX_DEPTH + 1):
        level = [v for x in level if isinstance(x, dict | list)
                 for v in (x.values() if isinstance(x, dict) else x)]
        if not level:
            return
    raise ConfigError(f"{where} is nested deeper than {MAX_DEPTH} levels")


def _check_containers(given: dict, schema: dict, prefix: str = "") -> None:
    """A mapping where the schema has a list (or the reverse) makes OmegaConf raise a bare
    TypeError that names no field; name it here."""
    for key, value in given.items():
        if not isinstance(key, str) or key not in schema:
            continue  # OmegaConf names unknown keys itself
        want, name = schema[key], one_line(f"{prefix}{key}")
        if isinstance(want, list) and isinstance(value, dict):
            raise ConfigError(f"{name} must be a list, got a mapping")
        if isinstance(want, dict) and isinstance(value, dict):
            _check_containers(value, want, f"{name}.")


def _merge(base: Path | dict | None, overrides: list[str] | tuple) -> RunConfig:
    """The one merger: defaults < base (a YAML file or a stored config) < dotted overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        layers = [OmegaConf.structured(RunConfig)]
        if isinstance(base, Path):
            layers.append(_yaml_layer(base))
        elif base is not None:
            _check_depth(base, "the stored config")
            _check_containers(base, dataclasses.asdict(RunConfig()))
            layers.append(OmegaConf.create(base))
        dotted = OmegaConf.from_dotlist(list(overrides))
        _check_containers(OmegaConf.to_container(dotted), dataclasses.asdict(RunConfig()))
        layers.append(dotted)
        return OmegaConf.to_object(OmegaConf.merge(*layers))  # __post_init__ validates
    except OmegaConfBaseException as e:
        raise _wrap_omegaconf_error(e) from None
    except (ValueError, YAMLError) as e:  # OmegaConf parses override values as YAML
        raise ConfigError(_first_line(e)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Defaults < YAML file < dotted overrides, then validate. Raises ConfigError."""
    _check_overrides(overrides, None)
    try:
        cfg = _merge(None if path is None else Path(path), overrides)
    except ConfigError as e:  # a bad value the file holds (not an override): name the file
        field = str(e).split(" ", 1)[0]
        if path is None or str(path) in str(e) or any(o.split("=", 1)[0] == field
                                                      for o in overrides):
            raise
        raise ConfigError(f"{path}: {e}") from None
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
