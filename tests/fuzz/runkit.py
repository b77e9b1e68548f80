"""A tiny trained run to mutate (the session's `tiny_run`), its shards, and an exported file.

`test_fuzz.py` hands the session fixtures over with `use`; the run-folder targets copy the run
into their case folder before editing it, so the seed stays intact for the other tests.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

_seed: dict[str, Path] = {}

# the files a run folder holds that its readers parse (paths relative to the run folder)
STEP = "checkpoints/step-000002"
RUN_FILES = (f"{STEP}/trainer_state.json", f"{STEP}/scheduler.json", "checkpoints/latest",
             "metrics.jsonl", "best/config.yaml", "best/metrics.json")


def use(run: Path, shards: Path) -> None:
    _seed.update(run=run, shards=shards)


def shards() -> Path:
    return _seed["shards"]


def copy_run(dst: Path) -> Path:
    shutil.copytree(_seed["run"], dst, symlinks=True)
    return dst


def train_overrides(run_dir: Path, *extra: str) -> list[str]:
    """The seed run's `train` overrides (without the command), retargeted at RUN_DIR."""
    from tests.e2e.trust_helpers import train_args

    return train_args(shards(), run_dir, "train.max_steps=2", *extra)[1:]


@cache
def exported() -> Path:
    """The seed run's best model exported as one .safetensors file (built once per process)."""
    from tests.fuzz.targets import cli_call

    out = Path(tempfile.mkdtemp(prefix="unetdist-fuzz-export-"))
    atexit.register(shutil.rmtree, out, True)
    cli_call("export", "--checkpoint", str(_seed["run"] / "best"), "--format", "safetensors",
             "--out", str(out / "model.safetensors"))
    return out / "model.safetensors"
