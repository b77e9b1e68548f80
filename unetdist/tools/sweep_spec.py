"""The sweep spec, typed: read once, every field checked before any trial is built.

A spec is a file someone wrote by hand (or someone else wrote for them): every key's type and
range is checked here, and each mistake is one `ConfigError` that names the file and the key
(`sweep spec s.yaml: count must be an integer, got 'many'`), never a ValueError from deep
inside the expansion. The fields are documented in `sweep.py`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetdist.errors import ConfigError, UserError
from unetdist.yamlio import load_yaml

METHODS = ("grid", "random")
MAX_TRIALS = 10_000  # a grid of 10 keys x 10 values would otherwise expand 10^10 configs
_SPEC_KEYS = {"config", "out", "method", "count", "seed", "overrides", "parameters",
              "group_by", "metric"}
_SCALAR = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Range:
    """A random draw between MIN and MAX (log-uniform with LOG)."""

    min: float
    max: float
    log: bool = False


Values = list | Range  # a grid axis / random choice, or a range (random only)


@dataclass
class Spec:
    """A parsed sweep spec (see `sweep.py`)."""

    config: str | None
    out: Path
    parameters: dict[str, Values]
    method: str = "grid"
    count: int = 0
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    group_by: str | None = None
    metric: str = "dice"


class _Bad(Exception):
    """A field error, before the spec's file name is added."""


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(d: dict, key: str, default: int) -> int:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{key} must be an integer, got {_show(v)}")
    return v


def _str(d: dict, key: str, default: str | None) -> str | None:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, str) or not v:
        raise _Bad(f"{key} must be a non-empty string, got {_show(v)}")
    return v


def _number(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(f"{key} must be a finite number, got {_show(v)}")
    return float(v)


def _range(key: str, d: dict, method: str) -> Range:
    where = f"parameters.{key}"
    if method != "random":
        raise _Bad(f"{where}: a range {{min, max, log}} needs method random; a grid takes a list")
    unknown = sorted(map(str, set(d) - {"min", "max", "log"}))
    if unknown or not {"min", "max"} <= set(d):
        raise _Bad(f"{where}: a range takes min, max and optionally log, got {sorted(map(str, d))}")
    lo, hi = _number(d["min"], f"{where}.min"), _number(d["max"], f"{where}.max")
    log = d.get("log", False)
    if not isinstance(log, bool):
        raise _Bad(f"{where}.log must be true or false, got {_show(log)}")
    if not lo < hi:
        raise _Bad(f"{where}: min must be < max")
    if log and lo <= 0:
        raise _Bad(f"{where}: a log range needs min > 0")
    return Range(lo, hi, log)


def _values(key: str, v: Any, method: str) -> Values:
    if isinstance(v, dict):
        return _range(key, v, method)
    if not isinstance(v, list) or not v:
        raise _Bad(f"parameters.{key} must be a non-empty list of values, got {_show(v)}")
    for item in v:  # a value becomes `key=value` on a command line: scalars or flat lists
        if not isinstance(item, _SCALAR) and not (
                isinstance(item, list) and all(isinstance(x, _SCALAR) for x in item)):
            raise _Bad(f"parameters.{key}: each value must be a number, string or boolean, "
                       f"got {_show(item)}")
    return v


def _parameters(d: dict, method: str) -> dict[str, Values]:
    params = d.get("parameters")
    if not isinstance(params, dict) or not params:
        raise _Bad("parameters must map dotted config keys to value lists")
    out = {}
    for key, v in params.items():
        if not isinstance(key, str) or ("." not in key and key != "seed"):
            raise _Bad(f"parameter {key!r} must be a dotted config key (optim.lr)")
        out[key] = _values(key, v, method)
    return out


def _overrides(d: dict) -> list[str]:
    v = d.get("overrides") or []
    if not isinstance(v, list) or not all(isinstance(o, str) for o in v):
        raise _Bad(f"overrides must be a list of key=value strings, got {_show(v)}")
    return v


def _trial_count(spec: Spec) -> int:
    if spec.method == "random":
        return spec.count
    return math.prod(len(v) for v in spec.parameters.values())


def _parse(d: Any, stem: str) -> Spec:
    if not isinstance(d, dict):
        raise _Bad("must hold a mapping")
    unknown = sorted(map(str, set(d) - _SPEC_KEYS))
    if unknown:
        raise _Bad(f"unknown key(s) {unknown}; allowed: {sorted(_SPEC_KEYS)}")
    method = _str(d, "method", "grid")
    if method not in METHODS:
        raise _Bad(f"method must be one of {'|'.join(METHODS)}, got {method!r}")
    spec = Spec(config=_str(d, "config", None), out=Path(_str(d, "out", f"runs/sweep-{stem}")),
                parameters=_parameters(d, method), method=method, count=_int(d, "count", 0),
                seed=_int(d, "seed", 0), overrides=_overrides(d),
                group_by=_str(d, "group_by", None), metric=_str(d, "metric", "dice"))
    if method == "random" and spec.count < 1:
        raise _Bad(f"count must be >= 1 for method random, got {spec.count}")
    if spec.group_by is not None and spec.group_by not in spec.parameters:
        raise _Bad(f"group_by {spec.group_by!r} must be one of the parameters")
    if _trial_count(spec) > MAX_TRIALS:
        raise _Bad(f"{_trial_count(spec)} trials is more than {MAX_TRIALS}; split the sweep")
    return spec


def read_spec(path: str | Path) -> Spec:
    """The typed spec of the YAML file PATH; one ConfigError line naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    d = load_yaml(path, "sweep spec")
    try:
        return _parse(d, path.stem)
    except _Bad as e:
        raise ConfigError(f"sweep spec {path}: {e}") from None
