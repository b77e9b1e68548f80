"""Fuzz targets on hand-written files: experiment config YAMLs and sweep specs, made hostile
(edited values, flipped bytes, alias and nesting bombs, duplicated keys) and fed to
`unetdist config`, `unetdist train --check` and `unetdist sweep --launch none`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from hypothesis import strategies as st

from tests.fuzz import mutate, shardkit
from tests.fuzz.targets import cli_call, target

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def seed_config(case: Path, name: str) -> dict:
    """configs/NAME as a dict, pointed at a sound shard folder and a run folder inside CASE."""
    doc = yaml.safe_load((CONFIGS / name).read_text())
    doc.setdefault("data", {})["shared_dir"] = str(shardkit.base_folder("plain"))
    doc.setdefault("train", {})["run_dir"] = str(case / "run")
    return doc


@target("config-yaml")
def config_yaml(case: Path, data: st.DataObject) -> Callable[[], object]:
    name = data.draw(st.sampled_from(sorted(p.name for p in CONFIGS.glob("*.yaml"))))
    f = case / "exp.yaml"
    f.write_bytes(data.draw(mutate.yaml_document(seed_config(case, name))))
    if data.draw(st.booleans()):
        return lambda: cli_call("config", "--config", str(f))
    # overrides keep what an edit may have pointed elsewhere inside the case's folder
    return lambda: cli_call("train", "--check", "--config", str(f),
                            f"train.run_dir={case / 'run'}")


SPEC = {"method": "grid", "parameters": {"optim.lr": [1.0e-3, 3.0e-3], "data.fold": [-1]},
        "overrides": ["model.width=8"], "group_by": "optim.lr", "metric": "dice"}
RANDOM_SPEC = {"method": "random", "count": 3, "seed": 1, "metric": "dice",
               "parameters": {"optim.lr": {"min": 1.0e-4, "max": 1.0e-2, "log": True},
                              "model.width": [8, 16]}}


def _inside(doc: object) -> object:
    """An edited spec whose `out` stays in the case's folder: where a sweep writes is the
    user's choice, not a write the fuzzer may count against it."""
    if isinstance(doc, dict) and isinstance(doc.get("out"), str):
        doc["out"] = "sweep-out"
    return doc


@target("sweep-spec")
def sweep_spec(case: Path, data: st.DataObject) -> Callable[[], object]:
    seed = dict(data.draw(st.sampled_from([SPEC, RANDOM_SPEC])))
    seed["overrides"] = [*seed.get("overrides", []),
                         f"data.shared_dir={shardkit.base_folder('plain')}"]
    kind = data.draw(st.sampled_from(["edited", "edited", "bytes", "bomb"]))
    if kind == "edited":
        text = yaml.safe_dump(_inside(data.draw(mutate.edited_json(seed)))).encode()
    elif kind == "bytes":
        text = data.draw(mutate.edited_bytes(yaml.safe_dump(seed).encode()))
    else:
        text = data.draw(st.sampled_from(mutate.YAML_BOMBS))
    f = case / "spec.yaml"  # no `out`: the default runs/sweep-spec/ is relative to the case
    f.write_bytes(text)
    return lambda: cli_call("sweep", str(f), "--launch", "none")
